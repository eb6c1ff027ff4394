"""A large `.keras` file loaded beside serving models: weights read by a child, assigned in slices."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from service.backends import keras_weights
from service.backends.base import ModelLoadError
from service.backends.keras_weights import load_keras_gently, worth_loading_gently

pytestmark = pytest.mark.slow


def test_a_model_loaded_gently_answers_as_keras_loads_it(demo_model_path, demo_holdout, monkeypatch):
    import keras

    monkeypatch.setattr(keras_weights, "SLICE_BYTES", 4096)  # the demo's kernels then go in several slices
    images, _ = demo_holdout
    model = load_keras_gently(str(demo_model_path))
    reference = keras.models.load_model(demo_model_path, compile=False)
    assert [tuple(w.shape) for w in model.weights] == [tuple(w.shape) for w in reference.weights]
    assert any(np.asarray(w).nbytes > 4096 for w in model.weights), "no weight was assigned in slices"
    np.testing.assert_allclose(model(images[:16]).numpy(), reference(images[:16]).numpy(), rtol=1e-6, atol=1e-7)


def test_weights_the_child_cannot_read_fail_the_load_saying_why(demo_model_path, tmp_path):
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(demo_model_path) as original, zipfile.ZipFile(broken, "w") as copy:
        for member in original.infolist():
            data = b"not HDF5" if member.filename == "model.weights.h5" else original.read(member)
            copy.writestr(member, data)
    with pytest.raises(ModelLoadError, match=r"cannot load Keras model .*broken\.keras"):
        load_keras_gently(str(broken))


def test_only_keras_archives_with_large_weights_are_loaded_gently(demo_model_path, tmp_path, monkeypatch):
    assert not worth_loading_gently(str(demo_model_path))  # 29 MB: Keras' own load pauses little
    monkeypatch.setattr(keras_weights, "GENTLE_FROM_BYTES", 1 << 20)
    assert worth_loading_gently(str(demo_model_path))
    (tmp_path / "not-a-zip.keras").write_bytes(b"garbage")
    assert not worth_loading_gently(str(tmp_path / "not-a-zip.keras"))
    assert not worth_loading_gently(str(tmp_path))  # a SavedModel directory
