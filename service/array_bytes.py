"""Named arrays as bytes and back, restoring each one's dtype, shape and every bit.

For what leaves the worker's memory: the result cache's Redis tier, and background jobs' inputs
and results. No pickle: only numeric, boolean and fixed-width string arrays are written.
"""

from __future__ import annotations

import struct

import numpy as np

from service.backends.base import Arrays

_HEAD = struct.Struct("<HBB")  # name length, dtype length, dimensions


def encode_arrays(arrays: Arrays) -> bytes:
    """Each array: its name, dtype, shape and bytes. Strings must be numpy's fixed-width ones (kinds U and S)."""
    parts = []
    for name, array in arrays.items():
        if array.dtype == object:
            raise TypeError(f"{name!r} holds Python objects; convert strings to a fixed-width dtype first")
        name_bytes, dtype = name.encode(), array.dtype.str.encode()
        parts += [_HEAD.pack(len(name_bytes), len(dtype), array.ndim), name_bytes, dtype]
        parts += [struct.pack(f"<{array.ndim}Q", *array.shape), np.ascontiguousarray(array).tobytes()]
    return b"".join(parts)


def decode_arrays(data: bytes) -> Arrays:
    """The arrays `encode_arrays` wrote, read-only views of `data`."""
    arrays, offset = {}, 0
    while offset < len(data):
        name_length, dtype_length, ndim = _HEAD.unpack_from(data, offset)
        offset += _HEAD.size
        name = data[offset : offset + name_length].decode()
        offset += name_length
        dtype = np.dtype(data[offset : offset + dtype_length].decode())
        offset += dtype_length
        shape = struct.unpack_from(f"<{ndim}Q", data, offset)
        offset += 8 * ndim
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
    return arrays
