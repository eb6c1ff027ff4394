"""Request decoding and response encoding against a model's signature."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.backends.signature import ModelSignature, TensorInfo
from service.errors import BadRequest
from service.protocols import tfserving_codec
from service.protocols.tfserving_codec import decode_request, encode_response

IMAGE = ModelSignature(inputs=(TensorInfo("x", "float32", (2, 2)),), outputs=(TensorInfo("p", "float32", (3,)),))
TWO_INPUTS = ModelSignature(
    inputs=(TensorInfo("ids", "int32", (3,)), TensorInfo("mask", "bool", (3,))),
    outputs=(TensorInfo("score", "float32", ()),),
)
VARIABLE = ModelSignature(inputs=(TensorInfo("tokens", "int64", (None,)),), outputs=(TensorInfo("n", "int64", ()),))
TEXT = ModelSignature(inputs=(TensorInfo("text", "string", ()),), outputs=(TensorInfo("len", "int64", ()),))


def decode(document, signature=IMAGE, max_instances=4):
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return decode_request(body, signature, max_instances)


def test_row_format_single_input():
    decoded = decode({"instances": [[[1, 2], [3, 4]], [[5, 6], [7, 8.5]]]})
    assert decoded.layout == "row" and decoded.count == 2
    assert decoded.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(decoded.inputs["x"][1], [[5, 6], [7, 8.5]])


def test_row_format_named_single_input():
    decoded = decode({"instances": [{"x": [[1, 2], [3, 4]]}]})
    assert decoded.count == 1 and decoded.inputs["x"].shape == (1, 2, 2)


def test_row_format_several_inputs():
    decoded = decode(
        {"instances": [{"ids": [1, 2, 3], "mask": [True, False, True]}, {"ids": [4, 5, 6], "mask": [True] * 3}]},
        TWO_INPUTS,
    )
    assert decoded.inputs["ids"].dtype == np.int32 and decoded.inputs["mask"].dtype == np.bool_
    assert decoded.inputs["ids"].shape == (2, 3)


def test_columnar_format():
    decoded = decode({"inputs": {"ids": [[1, 2, 3]], "mask": [[True, True, False]]}}, TWO_INPUTS)
    assert decoded.layout == "columnar" and decoded.count == 1
    bare = decode({"inputs": [[[1, 2], [3, 4]]]})
    assert bare.layout == "columnar" and bare.inputs["x"].shape == (1, 2, 2)


def test_variable_dimensions_accept_any_size():
    assert decode({"instances": [[1, 2, 3, 4, 5]]}, VARIABLE).inputs["tokens"].shape == (1, 5)


def test_strings():
    assert decode({"instances": ["hello", "world"]}, TEXT).inputs["text"].tolist() == ["hello", "world"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"instances": [[[NaN, 1], [1, 1]]]}', "non-finite"),
        (b'{"instances": [[[Infinity, 1], [1, 1]]]}', "non-finite"),
        (b'{"instances": [[[1e400, 1], [1, 1]]]}', "non-finite"),
        (b'{"instances": [[[1e39, 1], [1, 1]]]}', "non-finite"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_bodies_are_rejected(body, message):
    with pytest.raises(BadRequest, match=message):
        decode(body)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "missing key"),
        ({"instances": [], "inputs": []}, "not both"),
        ({"instances": []}, "empty"),
        ({"instances": [[[1, 2], [3, 4]]] * 5}, "at most 4"),
        ({"instances": "abc"}, "must be a list"),
        ({"instances": [[1, 2, 3, 4]]}, r"shape \[2, 2\]"),
        ({"instances": [[[1, 2], [3, 4, 5]]]}, "ragged"),
        ({"instances": [[["a", "b"], ["c", "d"]]]}, "must hold numbers"),
        ({"instances": [[[True, False], [True, True]]]}, "must hold numbers"),
        ({"instances": [[[1, True], [1, 2]]]}, "must hold numbers"),
        ({"instances": [[[1, None], [1, 2]]]}, "must hold numbers"),
        ({"instances": [[[1, 2], [3, 4]]], "extra": 1}, "unknown keys"),
        ({"instances": [[[1, 2], [3, 4]]], "signature_name": "other"}, "signature_name"),
        ({"inputs": {"y": [[[1, 2], [3, 4]]]}}, "exactly the keys"),
    ],
)
def test_invalid_requests_say_what_is_wrong(document, message):
    with pytest.raises(BadRequest, match=message):
        decode(document)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"instances": [[1, 2, 3]]}, "object keyed"),
        ({"instances": [{"ids": [1, 2, 3]}]}, "exactly the keys"),
        ({"instances": [{"ids": [1.5, 2, 3], "mask": [True] * 3}]}, "must hold integers"),
        ({"instances": [{"ids": [2**40, 2, 3], "mask": [True] * 3}]}, "outside the range of int32"),
        ({"instances": [{"ids": [1, 2, 3], "mask": [1, 0, 1]}]}, "must hold booleans"),
        ({"inputs": {"ids": [[1, 2, 3]], "mask": [[True] * 3] * 2}}, "same number of instances"),
        ({"inputs": [[1, 2, 3]]}, "keyed by the input names"),
    ],
)
def test_invalid_requests_for_several_inputs(document, message):
    with pytest.raises(BadRequest, match=message):
        decode(document, TWO_INPUTS)


def test_encode_rows_and_columns():
    single = {"p": np.array([[0.5, 0.25, 0.25]], dtype=np.float32)}
    assert encode_response(single, "row") == {"predictions": [[0.5, 0.25, 0.25]]}
    assert encode_response(single, "columnar") == {"outputs": [[0.5, 0.25, 0.25]]}
    several = {"a": np.array([1, 2]), "b": np.array([b"x", b"y"], dtype=object)}
    assert encode_response(several, "row") == {"predictions": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}
    assert encode_response(several, "columnar") == {"outputs": {"a": [1, 2], "b": ["x", "y"]}}


@pytest.fixture
def small_slices(monkeypatch):
    """Slices of about 100 bytes, so bodies of a few instances are decoded in slices; counts the pauses."""
    monkeypatch.setattr(tfserving_codec, "SLICE_BYTES", 100)
    pauses: list[None] = []
    return lambda: pauses.append(None), pauses


@pytest.mark.parametrize(
    "document",
    [
        {"instances": [[[i, 2], [3, 4.5]] for i in range(40)]},
        {"inputs": [[[i, 2], [3, 4.5]] for i in range(40)]},
        b'{ "instances" : [\n' + b",\n".join(b"  [[%d, 2], [3, 4.5]]" % i for i in range(40)) + b"\n] }\n",
    ],
)
def test_a_large_body_is_decoded_in_slices_exactly_as_whole(small_slices, document):
    pause, pauses = small_slices
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    sliced = decode_request(body, IMAGE, 100, pause)
    whole = decode_request(body, IMAGE, 100)
    assert len(pauses) > 2, "other requests ran between the slices"
    assert (sliced.layout, sliced.count) == (whole.layout, whole.count) == (whole.layout, 40)
    np.testing.assert_array_equal(sliced.inputs["x"], whole.inputs["x"])


def test_a_mistake_in_a_later_slice_gets_a_400_naming_the_input(small_slices):
    pause, _ = small_slices
    for last in ([[1, 2], [3]], [[1, 2], [3, 4], [5, 6]], [[1, 2], [3, True]]):
        body = json.dumps({"instances": [[[1, 2], [3, 4]]] * 30 + [last]}).encode()
        with pytest.raises(BadRequest, match="input 'x'"):
            decode_request(body, IMAGE, 100)
        with pytest.raises(BadRequest, match="input 'x'"):  # the slice's own mistake: a shape or a dtype
            decode_request(body, IMAGE, 100, pause)
    with pytest.raises(BadRequest, match=r"at most 20 .*MAX_REQUEST_INSTANCES"):
        decode_request(json.dumps({"instances": [[[1, 2], [3, 4]]] * 30}).encode(), IMAGE, 20, pause)


def test_bodies_with_strings_or_several_inputs_are_parsed_whole(small_slices):
    pause, pauses = small_slices
    words = decode_request(json.dumps({"instances": ["a [b], c"] * 30}).encode(), TEXT, 100, pause)
    assert words.inputs["text"].tolist() == ["a [b], c"] * 30
    rows = [{"ids": [1, 2, 3], "mask": [True, False, True]}] * 20
    assert decode_request(json.dumps({"instances": rows}).encode(), TWO_INPUTS, 100, pause).count == 20
    assert pauses == []


def test_regular_slices_are_read_as_flat_numbers_and_checked_as_usual(small_slices, monkeypatch):
    pause, _ = small_slices
    flat_reads, real = [], tfserving_codec._parse_regular

    def recording(*args):
        part = real(*args)
        flat_reads.append(part is not None)
        return part

    monkeypatch.setattr(tfserving_codec, "_parse_regular", recording)
    body = json.dumps({"instances": [[[i, -2], [3e-3, 4.5]] for i in range(40)]}).encode()
    sliced = decode_request(body, IMAGE, 100, pause)
    assert len(flat_reads) > 2 and all(flat_reads), "every slice took the flat path"
    np.testing.assert_array_equal(sliced.inputs["x"], decode_request(body, IMAGE, 100).inputs["x"])
    assert sliced.inputs["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("last", "message"),
    [
        ("[[1, 2], [3]]", "ragged"),  # a number missing: the brackets differ
        ("[[1, 2], [3, ]]", "JSON|shape"),  # an empty place
        ("[[1, 2], [3, null]]", "numbers"),
        ("[[1, 2], [3, 1e999]]", "non-finite"),
        ("[[1, 2], [3, true]]", "numbers"),
    ],
)
def test_an_irregular_slice_falls_back_to_the_usual_parse_and_its_error(small_slices, last, message):
    pause, _ = small_slices
    body = b'{"instances": [' + b", ".join([b"[[1, 2], [3, 4]]"] * 30 + [last.encode()]) + b"]}"
    with pytest.raises(BadRequest, match=message):
        decode_request(body, IMAGE, 100, pause)


def test_a_number_just_above_the_largest_float32_is_refused_not_rounded_to_it():
    body = json.dumps({"instances": [[[3.402823466385289e38, 0], [0, 0]]]}).encode()
    with pytest.raises(BadRequest, match="out-of-range numbers for float32"):
        decode_request(body, IMAGE, 100)
    largest = json.dumps({"instances": [[[float(np.finfo(np.float32).max), 0], [0, 0]]]}).encode()
    assert decode_request(largest, IMAGE, 100).inputs["x"][0, 0, 0] == np.finfo(np.float32).max
