"""TensorFlow's `TensorProto`, read into NumPy arrays and written from them without TensorFlow.

TF Serving's gRPC clients send each input as a TensorProto: a dtype, a shape, and the values
either packed in `tensor_content` (what `tf.make_tensor_proto` writes for arrays) or listed in
the typed field of the dtype (`float_val`, `int_val`, ...; a lone value stands for every
element, as `tf.make_ndarray` reads it). Inputs are checked as the REST protocols check them:
the dtype the model takes (no silent casts: TF Serving refuses `DT_DOUBLE` for a float input
too), its instance shape, finite numbers.

The declared shape is checked before anything is allocated: its batch dimension against
MAX_REQUEST_INSTANCES, and the data it declares against MAX_BODY_BYTES (a lone value standing
for every element may not stand for more than a body could carry). So a message of a few bytes
declaring a billion elements is refused in microseconds, not after expanding them.
"""

from __future__ import annotations

import math

import numpy as np

from service.backends.signature import TF_DTYPE_ENUMS, TensorInfo
from service.errors import BadRequest
from service.protocols.tfserving_codec import check_count
from service.tfserving_messages import DataType, TensorProto

# TF's dtype enum for each dtype the server takes, and the typed field its values may be listed in.
ENUM_OF = {dtype: DataType.Value(enum) for dtype, enum in TF_DTYPE_ENUMS.items() if dtype != "bfloat16"}
_DTYPE_OF = {enum: dtype for dtype, enum in ENUM_OF.items()}
_VALUE_FIELDS = {
    "float16": "half_val",  # the bits of each half, in an int32
    "float32": "float_val",
    "float64": "double_val",
    "int8": "int_val",
    "int16": "int_val",
    "int32": "int_val",
    "int64": "int64_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "bool": "bool_val",
    "string": "string_val",
}


def to_array(tensor: TensorProto, info: TensorInfo, max_instances: int, max_bytes: int) -> np.ndarray:
    """One input's TensorProto as an array of shape (batch, *instance shape); BadRequest saying what is wrong.

    Refused before anything is allocated: a batch dimension over `max_instances`, or a shape that
    declares more than `max_bytes` of data (strings count a byte an element).
    """
    dtype = _DTYPE_OF.get(tensor.dtype)
    if dtype != info.dtype:
        given = DataType.Name(tensor.dtype) if tensor.dtype in DataType.values() else tensor.dtype
        raise BadRequest(f"input {info.name!r} is {given}; the model takes {TF_DTYPE_ENUMS[info.dtype]}")
    shape = _shape(tensor, info)
    check_count(shape[0], max_instances, f"the batch dimension of input {info.name!r}")
    size = math.prod(shape)  # a Python int: exact however large the dimensions
    declared_bytes = size * (1 if dtype == "string" else np.dtype(dtype).itemsize)
    if declared_bytes > max_bytes:
        raise BadRequest(
            f"input {info.name!r}: shape {list(shape)} of {dtype} declares {declared_bytes:,} bytes of data; "
            f"a request carries at most {max_bytes:,} (MAX_BODY_BYTES)"
        )
    if dtype == "string":
        array = np.empty(size, dtype=object)
        array[:] = _listed(tensor.string_val, size, info)
        return array.reshape(shape)
    if tensor.tensor_content:
        width = np.dtype(dtype).itemsize
        if len(tensor.tensor_content) != size * width:
            raise BadRequest(
                f"input {info.name!r}: tensor_content has {len(tensor.tensor_content)} bytes; "
                f"shape {list(shape)} of {dtype} needs {size * width}"
            )
        array = np.frombuffer(tensor.tensor_content, np.dtype(dtype).newbyteorder("<"))
        if dtype == "bool" and not np.isin(np.frombuffer(tensor.tensor_content, np.uint8), (0, 1)).all():
            raise BadRequest(f"input {info.name!r}: bool bytes must be 0 or 1")
    else:
        values = _listed(getattr(tensor, _VALUE_FIELDS[dtype]), size, info)
        if dtype == "float16":
            array = np.asarray(values, dtype=np.int64).astype(np.uint16).view(np.float16)
        else:
            with np.errstate(over="ignore"):
                array = np.asarray(values).astype(dtype)
            if dtype in ("int8", "int16", "uint8", "uint16") and not np.array_equal(array, values):
                raise BadRequest(f"input {info.name!r} has integers outside the range of {dtype}")
    array = array.astype(dtype, copy=False).reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input {info.name!r} has non-finite numbers (NaN or infinity)")
    return array


def from_array(array: np.ndarray, into: TensorProto) -> None:
    """Write `array` into the TensorProto `into`: numbers packed in `tensor_content`, strings in `string_val`."""
    if array.dtype.kind in "OSU":
        into.dtype = DataType.Value("DT_STRING")
        into.string_val.extend(value if isinstance(value, bytes) else str(value).encode() for value in array.ravel())
    else:
        into.dtype = ENUM_OF[array.dtype.name]
        into.tensor_content = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    for size in array.shape:
        into.tensor_shape.dim.add(size=size)


def _shape(tensor: TensorProto, info: TensorInfo) -> tuple[int, ...]:
    if tensor.tensor_shape.unknown_rank or not tensor.tensor_shape.dim:
        raise BadRequest(f"input {info.name!r} needs a tensor_shape, the batch dimension first")
    shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
    instance = shape[1:]
    if (
        any(size < 0 for size in shape)
        or len(instance) != len(info.instance_shape)
        or any(want is not None and got != want for got, want in zip(instance, info.instance_shape, strict=True))
    ):
        expected = ["batch", *("any" if dim is None else dim for dim in info.instance_shape)]
        raise BadRequest(f"input {info.name!r} has shape {list(shape)}; the model takes {expected}")
    return shape


def _listed(values, size: int, info: TensorInfo) -> list | np.ndarray:
    """A typed field's values: exactly `size` of them, or one that stands for every element (filled, not copied)."""
    if len(values) == size:
        return list(values)
    if len(values) == 1:
        return np.full(size, values[0], dtype=object if isinstance(values[0], bytes) else None)
    raise BadRequest(f"input {info.name!r} lists {len(values)} values; its tensor_shape needs {size}")
