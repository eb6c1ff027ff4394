"""The TF Serving descriptors the server builds its gRPC messages from match the installed packages."""

from __future__ import annotations

import pytest

from scripts.write_tfserving_descriptors import DESCRIPTORS_FILE, descriptor_set


@pytest.mark.slow
def test_the_committed_descriptors_are_those_of_the_installed_tensorflow_serving_api():
    assert DESCRIPTORS_FILE.read_bytes() == descriptor_set(), "stale: run scripts/write_tfserving_descriptors.py"


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
