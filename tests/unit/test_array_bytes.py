"""Named arrays as bytes: every dtype, shape and bit restored; Python objects refused."""

from __future__ import annotations

import numpy as np
import pytest

from service.array_bytes import decode_arrays, encode_arrays


@pytest.mark.parametrize(
    "outputs",
    [
        {"y": np.array([1.5, np.nan, -0.0, np.inf], np.float32)},
        {"scores": np.arange(6, dtype=np.float16).reshape(2, 3), "label": np.array(7, np.int64)},
        {"flags": np.array([True, False]), "big": np.array([2**62], np.uint64)},
        {"words": np.array([["héllo", ""], ["a", "bc"]]), "raw": np.array([b"\x00\xff"])},
    ],
)
def test_the_binary_form_restores_dtype_shape_and_every_bit(outputs):
    restored = decode_arrays(encode_arrays(outputs))
    assert list(restored) == list(outputs)
    for name, array in outputs.items():
        assert restored[name].dtype == array.dtype and restored[name].shape == array.shape
        assert restored[name].tobytes() == array.tobytes()


def test_python_objects_are_refused_rather_than_pickled():
    with pytest.raises(TypeError, match="fixed-width"):
        encode_arrays({"s": np.array(["a", 1], dtype=object)})
