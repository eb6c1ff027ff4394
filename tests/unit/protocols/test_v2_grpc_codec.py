"""ModelInferRequest's typed and raw inputs, read as REST's are checked, for every datatype's field."""

from __future__ import annotations

import numpy as np
import pytest

from service.backends.signature import ModelSignature, TensorInfo
from service.errors import BadRequest
from service.protocols.v2_codec import binary_of
from service.protocols.v2_grpc_codec import decode_model_infer, encode_model_infer
from service.v2_messages import ModelInferRequest, ModelInferResponse


def signature_of(dtype: str) -> ModelSignature:
    return ModelSignature(inputs=(TensorInfo("x", dtype, (2,)),), outputs=(TensorInfo("y", dtype, (2,)),))


def typed(datatype: str, field: str, values: list) -> ModelInferRequest:
    request = ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[len(values) // 2, 2])
    getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(
    ("dtype", "datatype", "field", "values"),
    [
        ("int8", "INT8", "int_contents", [-128, 127]),
        ("uint16", "UINT16", "uint_contents", [0, 65535]),
        ("int64", "INT64", "int64_contents", [-(2**63), 2**63 - 1]),
        ("uint64", "UINT64", "uint64_contents", [0, 2**64 - 1]),
        ("float64", "FP64", "fp64_contents", [0.5, -1e300]),
        ("bool", "BOOL", "bool_contents", [True, False]),
        ("string", "BYTES", "bytes_contents", [b"a", b"\xff"]),
    ],
)
def test_typed_contents_of_each_field_read_exactly(dtype, datatype, field, values):
    decoded = decode_model_infer(typed(datatype, field, values), signature_of(dtype), 10)
    assert decoded.count == 1 and decoded.inputs["x"].reshape(-1).tolist() == values
    assert decoded.inputs["x"].dtype == np.dtype(object if dtype == "string" else dtype)


def test_integers_outside_the_datatype_are_refused_not_wrapped():
    with pytest.raises(BadRequest, match=r"outside INT8's \[-128, 127\]"):
        decode_model_infer(typed("INT8", "int_contents", [1, 128]), signature_of("int8"), 10)


def test_fp16_comes_raw_only_and_raw_reads_as_rest_binary_does():
    with pytest.raises(BadRequest, match="FP16 has no typed contents"):
        decode_model_infer(typed("FP16", "fp32_contents", [1, 2]), signature_of("float16"), 10)
    request = ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP16", shape=[1, 2])
    request.raw_input_contents.append(np.array([1.5, -2], "<f2").tobytes())
    decoded = decode_model_infer(request, signature_of("float16"), 10)
    assert decoded.inputs["x"].tolist() == [[1.5, -2.0]]


def test_the_batch_dimension_is_bounded():
    with pytest.raises(BadRequest, match="at most 3"):
        decode_model_infer(typed("FP64", "fp64_contents", [0.0] * 8), signature_of("float64"), 3)


def test_outputs_are_answered_raw_bytes_included():
    request = decode_model_infer(typed("BYTES", "bytes_contents", [b"a", b"bc"]), signature_of("string"), 10)
    result = {"y": np.array([[b"a", b"bc"]], dtype=object)}
    response = ModelInferResponse.FromString(encode_model_infer("m", 3, request, result))
    assert (response.model_version, response.outputs[0].datatype, list(response.outputs[0].shape)) == (
        "3",
        "BYTES",
        [1, 2],
    )
    assert response.raw_output_contents[0] == binary_of(result["y"], "BYTES")
