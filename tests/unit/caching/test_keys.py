"""Cache keys: one per instance, equal exactly when model, dtype, shape and bytes are."""

from __future__ import annotations

import numpy as np

from service.caching.keys import instance_keys, model_identity

MODEL = model_identity("m", 1, "digest")


def test_an_instance_has_the_same_key_wherever_it_appears():
    first = instance_keys(MODEL, {"x": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)}, 2)
    second = instance_keys(MODEL, {"x": np.array([[3.0, 4.0], [9.0, 9.0], [1.0, 2.0]], np.float32)}, 3)
    assert first[0] == second[2] and first[1] == second[0]
    assert len({*first, second[1]}) == 3


def test_equal_bytes_of_another_dtype_or_shape_or_input_are_another_key():
    zeros = np.zeros((1, 4), np.float32)
    keys = {
        instance_keys(MODEL, {"x": zeros}, 1)[0],
        instance_keys(MODEL, {"x": zeros.view(np.int32)}, 1)[0],
        instance_keys(MODEL, {"x": zeros.reshape(1, 2, 2)}, 1)[0],
        instance_keys(MODEL, {"y": zeros}, 1)[0],
    }
    assert len(keys) == 4


def test_another_model_version_or_file_never_shares_a_key():
    inputs = {"x": np.ones((1, 3), np.float32)}
    keys = {
        instance_keys(identity, inputs, 1)[0]
        for identity in (MODEL, model_identity("m", 2, "digest"), model_identity("m", 1, "other"))
    }
    assert len(keys) == 3


def test_strings_are_keyed_by_value_and_type():
    words = {"s": np.array([["ab", "c"], ["a", "bc"], ["ab", "c"]], dtype=object)}
    keys = instance_keys(MODEL, words, 3)
    assert keys[0] == keys[2] and keys[0] != keys[1], "the length of each string is part of the key"
    as_bytes = instance_keys(MODEL, {"s": np.array([[b"ab", b"c"]], dtype=object)}, 1)
    assert as_bytes[0] != keys[0]


def test_every_input_counts_whatever_order_they_came_in():
    a, b = np.array([[1], [1]], np.int64), np.array([[5], [6]], np.int64)
    keys = instance_keys(MODEL, {"a": a, "b": b}, 2)
    assert keys[0] != keys[1]
    assert keys == instance_keys(MODEL, {"b": b, "a": a}, 2)


def test_a_string_has_one_key_whatever_the_width_of_the_array_it_came_in():
    narrow = instance_keys(MODEL, {"s": np.array([["ab"], ["c"]])}, 2)  # numpy's <U2
    wide = instance_keys(MODEL, {"s": np.array([["ab"], ["xyz"]])}, 2)  # <U3
    assert narrow[0] == wide[0] and narrow[1] != wide[1]
