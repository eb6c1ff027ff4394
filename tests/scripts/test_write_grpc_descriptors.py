"""The descriptors the server builds its gRPC messages from match the installed packages."""

from __future__ import annotations

import pytest

from scripts.write_grpc_descriptors import DESCRIPTOR_SETS, descriptor_set


@pytest.mark.slow
@pytest.mark.parametrize("path", DESCRIPTOR_SETS, ids=lambda path: path.name)
def test_the_committed_descriptors_are_those_of_the_installed_packages(path):
    assert path.read_bytes() == descriptor_set(DESCRIPTOR_SETS[path]), "stale: run scripts/write_grpc_descriptors.py"


@pytest.mark.slow
def test_messages_built_without_tensorflow_read_and_write_the_stubs_messages():
    from tensorflow_serving.apis import predict_pb2

    from service import tfserving_messages as messages

    ours = messages.PredictRequest()
    ours.model_spec.name, ours.model_spec.version.value = "digits", 3
    ours.inputs["image"].dtype = messages.DataType.Value("DT_FLOAT")
    ours.inputs["image"].tensor_shape.dim.add(size=2)
    ours.inputs["image"].float_val.extend([0.5, 1.5])
    theirs = predict_pb2.PredictRequest.FromString(ours.SerializeToString())
    assert (theirs.model_spec.name, theirs.model_spec.version.value) == ("digits", 3)
    assert list(theirs.inputs["image"].float_val) == [0.5, 1.5]
    assert messages.PredictRequest.FromString(theirs.SerializeToString()) == ours


def test_v2_messages_built_without_tritonclient_read_and_write_its_messages():
    from tritonclient.grpc import service_pb2

    from service import v2_messages as messages

    ours = messages.ModelInferRequest(model_name="digits", model_version="2", id="a")
    ours.inputs.add(name="image", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([0.5, 1.5])
    ours.raw_input_contents.append(b"\x00\x01")
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, theirs.model_version, theirs.id) == ("digits", "2", "a")
    assert list(theirs.inputs[0].contents.fp32_contents) == [0.5, 1.5]
    assert messages.ModelInferRequest.FromString(theirs.SerializeToString()) == ours
