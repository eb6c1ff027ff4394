"""TensorProto to arrays and back; checked against TensorFlow's own `make_tensor_proto` and `make_ndarray` by the
tests marked slow, which import it (the code under test does not)."""

from __future__ import annotations

import numpy as np
import pytest

from service.backends.signature import TensorInfo
from service.errors import BadRequest
from service.protocols.tensor_proto import ENUM_OF, from_array, to_array
from service.tfserving_messages import DataType, TensorProto

MAX_INSTANCES, MAX_BYTES = 100, 1 << 20


@pytest.fixture
def tf():
    """TensorFlow, for the tests that hold this module's reading and writing against its own."""
    import tensorflow

    return tensorflow


def packed(array: np.ndarray) -> TensorProto:
    """A TensorProto holding `array` as TensorFlow's `make_tensor_proto` does: its bytes in `tensor_content`."""
    tensor = TensorProto()
    from_array(array, tensor)
    return tensor


def listed(values: list, shape: list[int], dtype: str = "DT_FLOAT", field: str = "float_val") -> TensorProto:
    tensor = TensorProto(dtype=DataType.Value(dtype))
    getattr(tensor, field).extend(values)
    tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=size) for size in shape)
    return tensor


def read(tensor, info: TensorInfo) -> np.ndarray:
    """`to_array` within a request's limits (MAX_REQUEST_INSTANCES, MAX_BODY_BYTES)."""
    return to_array(tensor, info, MAX_INSTANCES, MAX_BYTES)


NUMERIC = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


def sample(dtype: str, shape=(3, 2)) -> np.ndarray:
    if dtype == "bool":
        return np.arange(6).reshape(shape) % 2 == 0
    if dtype == "string":
        return np.array([b"a", b"bc", b"", "é".encode(), b"x", b"yz"], dtype=object).reshape(shape)
    return (np.arange(6).reshape(shape) * (3 if dtype[0] != "f" else 1.5)).astype(dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [*NUMERIC, "bool", "string"])
def test_every_dtype_reads_what_tensorflow_writes_and_writes_what_it_reads(tf, dtype):
    array = sample(dtype)
    info = TensorInfo("x", dtype, (2,))
    decoded = read(tf.make_tensor_proto(array), info)
    assert decoded.shape == (3, 2) and decoded.dtype == (object if dtype == "string" else np.dtype(dtype))
    assert decoded.tolist() == array.tolist()
    proto = tf.make_tensor_proto(0.0)
    proto.Clear()
    proto.ParseFromString(packed(decoded).SerializeToString())  # our bytes, read by TensorFlow's own message
    assert tf.make_ndarray(proto).tolist() == array.tolist()
    assert proto.dtype == (DataType.Value("DT_STRING") if dtype == "string" else ENUM_OF[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [*NUMERIC, "bool"])
def test_values_listed_in_the_typed_fields_are_read_too(tf, dtype):
    array = sample(dtype)
    proto = tf.make_tensor_proto(array.tolist(), dtype=tf.as_dtype(dtype))  # from a list: the typed field
    by_hand = tf.make_tensor_proto(array)
    by_hand.ClearField("tensor_content")
    field = {
        "float16": "half_val",
        "float32": "float_val",
        "float64": "double_val",
        "int64": "int64_val",
        "uint32": "uint32_val",
        "uint64": "uint64_val",
        "bool": "bool_val",
    }.get(dtype, "int_val")
    values = array.view(np.uint16).ravel().tolist() if dtype == "float16" else array.ravel().tolist()
    by_hand.ClearField(field)
    getattr(by_hand, field).extend(values)
    for tensor in (proto, by_hand):
        assert read(tensor, TensorInfo("x", dtype, (2,))).tolist() == array.tolist()


@pytest.mark.slow
def test_one_listed_value_stands_for_every_element_as_in_tensorflow(tf):
    tensor = tf.make_tensor_proto(7.5, dtype=tf.float32, shape=[2, 3])
    assert tensor.float_val == [7.5] and not tensor.tensor_content
    assert read(tensor, TensorInfo("x", "float32", (3,))).tolist() == [[7.5] * 3] * 2


def test_one_listed_value_fills_every_element():
    assert read(listed([7.5], [2, 3]), TensorInfo("x", "float32", (3,))).tolist() == [[7.5] * 3] * 2


@pytest.mark.parametrize(
    ("tensor", "info", "message"),
    [
        (packed(np.zeros((1, 2))), TensorInfo("x", "float32", (2,)), "is DT_DOUBLE; the model takes DT_FLOAT"),
        (packed(np.zeros((1, 3), np.float32)), TensorInfo("x", "float32", (2,)), "has shape [1, 3]"),
        (listed([1.0], []), TensorInfo("x", "float32", ()), "needs a tensor_shape"),
        (listed([np.nan, 1.0], [1, 2]), TensorInfo("x", "float32", (2,)), "non-finite"),
        (listed([300, 1], [1, 2], "DT_INT32", "int_val"), TensorInfo("x", "int32", (2,)), None),
        (listed([1.0, 2.0, 3.0], [1, 2]), TensorInfo("x", "float32", (2,)), "lists 3 values"),
    ],
)
def test_what_the_model_cannot_take_is_a_client_mistake_that_says_what(tensor, info, message):
    if message is None:  # in range: accepted
        assert read(tensor, info).tolist() == [[300, 1]]
        return
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        read(tensor, info)


def test_packed_bytes_must_fill_the_shape_and_booleans_be_0_or_1():
    short = packed(np.zeros((2, 2), np.float32))
    short.tensor_content = short.tensor_content[:-1]
    with pytest.raises(BadRequest, match="tensor_content has 15 bytes"):
        read(short, TensorInfo("x", "float32", (2,)))
    flags = packed(np.array([[True, False]]))
    flags.tensor_content = b"\x01\x02"
    with pytest.raises(BadRequest, match="bool bytes must be 0 or 1"):
        read(flags, TensorInfo("x", "bool", (2,)))


def test_narrow_integers_outside_their_range_are_refused():
    tensor = listed([200], [1], "DT_INT8", "int_val")
    with pytest.raises(BadRequest, match="outside the range of int8"):
        read(tensor, TensorInfo("x", "int8", ()))


def test_dimensions_of_any_size_take_every_size():
    info = TensorInfo("x", "float32", (None, 2))
    assert read(packed(np.ones((1, 5, 2), np.float32)), info).shape == (1, 5, 2)


@pytest.mark.parametrize(
    ("shape", "info", "message"),
    [
        ([200_000, 8, 8, 1], TensorInfo("x", "float32", (8, 8, 1)), "input .x. holds 200000 instances"),
        ([2**62, 8, 8, 1], TensorInfo("x", "float32", (8, 8, 1)), f"holds {2**62} instances"),
        ([1, 2**40], TensorInfo("x", "float32", (None,)), "declares 4,398,046,511,104 bytes of data"),
        ([100, 2**20], TensorInfo("x", "string", (None,)), "declares 104,857,600 bytes"),
    ],
)
def test_a_few_bytes_declaring_a_huge_tensor_are_refused_before_anything_is_allocated(shape, info, message):
    tensor = TensorProto(dtype=ENUM_OF.get(info.dtype, DataType.Value("DT_STRING")))
    tensor.float_val.append(1.0)  # one value "stands for all", as tf.make_ndarray reads it
    tensor.string_val.append(b"x")
    tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=size) for size in shape)
    assert tensor.ByteSize() < 100
    with pytest.raises(BadRequest, match=message):
        read(tensor, info)
