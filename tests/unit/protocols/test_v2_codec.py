"""The Open Inference Protocol's infer bodies: JSON and binary tensors in, answers out, and every mistake a 400."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from service.backends.signature import ModelSignature, TensorInfo
from service.errors import BadRequest
from service.protocols.v2_codec import decode_infer_request, encode_infer_response

SIGNATURE = ModelSignature(
    inputs=(TensorInfo("x", "float32", (3,)), TensorInfo("tag", "string", ())),
    outputs=(TensorInfo("y", "float32", (3,)), TensorInfo("n", "int64", ())),
)
X = np.array([[1.5, -2.0, 3.25], [0.0, 4.0, -1.0]], np.float32)


def tensor(name, datatype, shape, data=None, **parameters) -> dict:
    found = {"name": name, "datatype": datatype, "shape": shape}
    if data is not None:
        found["data"] = data
    if parameters:
        found["parameters"] = parameters
    return found


def json_body(**document) -> bytes:
    return orjson.dumps(document)


def strings(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


def decode(body: bytes, header_length: int | None = None, max_instances: int = 100):
    return decode_infer_request(body, None if header_length is None else str(header_length), SIGNATURE, max_instances)


def test_flat_and_nested_json_data_decode_alike_and_the_batch_is_the_first_dimension():
    tag = tensor("tag", "BYTES", [2], ["a", "b"])
    flat = decode(json_body(id="r1", inputs=[tensor("x", "FP32", [2, 3], X.ravel().tolist()), tag]))
    nested = decode(json_body(inputs=[tensor("x", "FP32", [2, 3], X.tolist()), tag]))
    assert flat.count == nested.count == 2 and flat.id == "r1" and nested.id is None
    np.testing.assert_array_equal(flat.inputs["x"], X)
    np.testing.assert_array_equal(nested.inputs["x"], X)
    assert flat.inputs["x"].dtype == np.float32
    assert [(o.name, o.binary) for o in flat.outputs] == [("y", False), ("n", False)]


def test_binary_inputs_follow_the_json_header_in_the_order_of_the_inputs():
    header = json_body(
        inputs=[
            tensor("tag", "BYTES", [2], binary_data_size=len(strings(b"\x00\xff", b"ok"))),
            tensor("x", "FP32", [2, 3], binary_data_size=X.nbytes),
        ]
    )
    body = header + strings(b"\x00\xff", b"ok") + X.astype("<f4").tobytes()
    decoded = decode(body, len(header))
    np.testing.assert_array_equal(decoded.inputs["x"], X)
    assert decoded.inputs["tag"].tolist() == [b"\x00\xff", b"ok"], "BYTES are any bytes, not only text"


def test_outputs_are_selected_and_sent_as_binary_when_asked():
    document = {
        "id": "q",
        "inputs": [tensor("x", "FP32", [2, 3], X.tolist()), tensor("tag", "BYTES", [2], ["a", "b"])],
        "outputs": [{"name": "n"}, {"name": "y", "parameters": {"binary_data": True}}],
    }
    request = decode(orjson.dumps(document))
    result = {"y": X * 2, "n": np.array([7, 8], np.int64)}
    body, header_length = encode_infer_response("m", 3, request, result)
    answer = orjson.loads(body[:header_length])
    assert answer["id"] == "q" and answer["model_name"] == "m" and answer["model_version"] == "3"
    n, y = answer["outputs"]
    assert n == {"name": "n", "datatype": "INT64", "shape": [2], "data": [7, 8]}
    assert y["name"] == "y" and y["datatype"] == "FP32" and y["shape"] == [2, 3] and "data" not in y
    assert y["parameters"]["binary_data_size"] == len(body) - header_length
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], "<f4").reshape(2, 3), X * 2)


def test_binary_data_output_makes_every_output_binary_and_json_answers_have_no_header_length():
    inputs = [tensor("x", "FP32", [2, 3], X.tolist()), tensor("tag", "BYTES", [2], ["a", "b"])]
    result = {"y": X, "n": np.array([1, 2], np.int64)}
    binary = decode(json_body(inputs=inputs, parameters={"binary_data_output": True}))
    assert all(output.binary for output in binary.outputs)
    body, header_length = encode_infer_response("m", 1, decode(json_body(inputs=inputs)), result)
    assert header_length is None and orjson.loads(body)["outputs"][0]["data"] == X.ravel().tolist()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"inputs": []}, "non-empty 'inputs'"),
        ({"inputs": [tensor("x", "FP32", [2, 3], X.tolist())]}, "exactly the model's"),
        ({"inputs": [tensor("x", "FP64", [2, 3], X.tolist()), tensor("tag", "BYTES", [2], ["a", "b"])]}, "FP32"),
        ({"inputs": [tensor("x", "FP32", [2, 4], [0] * 8), tensor("tag", "BYTES", [2], ["a", "b"])]}, "shape"),
        ({"inputs": [tensor("x", "FP32", [2, 3], [0] * 5), tensor("tag", "BYTES", [2], ["a", "b"])]}, "5 values"),
        ({"inputs": [tensor("x", "FP32", [2, 3], [True] * 6), tensor("tag", "BYTES", [2], ["a", "b"])]}, "numbers"),
        ({"inputs": [tensor("x", "FP32", [2, 3], X.tolist()), tensor("tag", "BYTES", [1], ["a"])]}, "same first"),
        ({"inputs": [tensor("x", "FP32", [2, 3]), tensor("tag", "BYTES", [2], ["a", "b"])]}, "needs 'data'"),
        ({"inputs": [tensor("x", "FP32", [2, 3], X.tolist()), tensor("x", "FP32", [2, 3], X.tolist())]}, "twice"),
        (
            {
                "inputs": [tensor("x", "FP32", [2, 3], X.tolist()), tensor("tag", "BYTES", [2], ["a", "b"])],
                "outputs": [{"name": "z"}],
            },
            "one of the model's outputs",
        ),
        ({"id": 5, "inputs": [tensor("x", "FP32", [2, 3], X.tolist())]}, "'id' must be a string"),
        ({"inputs": [tensor("x", "FP32", [0, 3], []), tensor("tag", "BYTES", [0], [])]}, "at least one instance"),
    ],
)
def test_a_malformed_json_request_is_a_400_that_says_what_is_wrong(document, message):
    with pytest.raises(BadRequest, match=message):
        decode(orjson.dumps(document))


def test_too_many_instances_are_refused():
    document = {"inputs": [tensor("x", "FP32", [2, 3], X.tolist()), tensor("tag", "BYTES", [2], ["a", "b"])]}
    with pytest.raises(BadRequest, match="at most 1"):
        decode(orjson.dumps(document), max_instances=1)


def binary_request(x_bytes: bytes, x_size: int | None = None, tags: bytes = strings(b"a", b"b"), extra: bytes = b""):
    header = json_body(
        inputs=[
            tensor("x", "FP32", [2, 3], binary_data_size=len(x_bytes) if x_size is None else x_size),
            tensor("tag", "BYTES", [2], binary_data_size=len(tags)),
        ]
    )
    return header + x_bytes + tags + extra, len(header)


@pytest.mark.parametrize(
    ("body_and_length", "message"),
    [
        (binary_request(X.tobytes()[:-4]), "needs 24"),
        (binary_request(X.tobytes(), x_size=10_000), "does not fit"),
        (binary_request(X.tobytes(), extra=b"\x00"), "1 bytes after"),
        (binary_request(np.array([[np.nan] * 3] * 2, np.float32).tobytes()), "non-finite"),
        (binary_request(X.tobytes(), tags=strings(b"a")), "1 BYTES elements"),
        (binary_request(X.tobytes(), tags=b"\x05\x00\x00\x00ab"), "longer than"),
    ],
)
def test_a_malformed_binary_request_is_a_400_that_says_what_is_wrong(body_and_length, message):
    with pytest.raises(BadRequest, match=message):
        decode(*body_and_length)


def test_a_header_length_that_is_not_a_byte_count_within_the_body_is_a_400():
    body, _ = binary_request(X.tobytes())
    for header in (str(len(body) + 1), "-1", "12x"):
        with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
            decode_infer_request(body, header, SIGNATURE, 100)


def test_bool_bytes_must_be_zero_or_one():
    signature = ModelSignature(inputs=(TensorInfo("b", "bool", (2,)),), outputs=(TensorInfo("y", "float32", ()),))
    header = json_body(inputs=[tensor("b", "BOOL", [1, 2], binary_data_size=2)])
    assert decode_infer_request(header + b"\x01\x00", str(len(header)), signature, 10).inputs["b"].tolist() == [
        [True, False]
    ]
    with pytest.raises(BadRequest, match="0 or 1"):
        decode_infer_request(header + b"\x02\x00", str(len(header)), signature, 10)
