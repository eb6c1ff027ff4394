"""A `.keras` file loaded beside models that serve, without long pauses of the interpreter lock.

Keras reads each layer's weights from HDF5 and copies them into tensors in single calls of tens
of megabytes, and its build triggers full garbage collections of the worker's large heap: each
holds the interpreter lock for 100-200 ms, during which no request of the other models moves
(BENCHMARKS.md, "Many models"). Here a child process (`python -m service.backends.keras_weights`)
reads the weights and writes them as `.npy` files; the worker builds the model from the archive's
config with the collector paused, then assigns each weight from its file in slices of
`SLICE_BYTES`, so no single call holds the lock for long. Slower to finish (the child imports
TensorFlow), gentler meanwhile: for loads beside others only.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from service.backends.base import ModelLoadError
from service.backends.children import finished, last_error_line, run_module_on_host

SLICE_BYTES = 4 << 20  # a copy of this size takes about a millisecond
# Below this much weight, Keras' own load holds the lock a few tens of milliseconds at most, and
# the child's start (importing TensorFlow) costs more than it spares.
GENTLE_FROM_BYTES = 64 << 20
WRITTEN = "weights written:"  # the child's last line, when it wrote them all


def worth_loading_gently(path: str) -> bool:
    """Whether `path` is a `.keras` archive whose weights are large enough for `load_keras_gently`."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.getinfo("model.weights.h5").file_size >= GENTLE_FROM_BYTES
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def load_keras_gently(path: str):
    """The Keras model at `path` (a `.keras` archive), its weights read by a child; ModelLoadError saying why not."""
    import keras

    with tempfile.TemporaryDirectory(prefix="tf-model-server-weights-") as scratch:
        _read_weights_in_child(path, scratch)
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        collecting = gc.isenabled()
        gc.disable()  # a full collection of the worker's heap is one long hold of the interpreter lock
        try:
            model = keras.saving.deserialize_keras_object(config)
        finally:
            if collecting:
                gc.enable()
        count = len(list(Path(scratch).glob("*.npy")))
        if count != len(model.weights):
            raise ModelLoadError(f"{path!r}: its weights file holds {count} arrays, its config {len(model.weights)}")
        for index, weight in enumerate(model.weights):
            _assign_in_slices(weight, Path(scratch, f"{index}.npy"), path)
    return model


def _read_weights_in_child(path: str, scratch: str) -> None:
    done = run_module_on_host("service.backends.keras_weights", os.path.abspath(path), scratch)
    if not finished(done, WRITTEN):
        raise ModelLoadError(f"cannot load Keras model {path!r}: {last_error_line(done.stderr)}")


def _assign_in_slices(weight, file: Path, path: str) -> None:
    import numpy as np

    values = np.load(file, mmap_mode="r")
    if tuple(values.shape) != tuple(weight.shape):
        raise ModelLoadError(f"{path!r}: weight {weight.path} is {tuple(weight.shape)} in its config, {values.shape}")
    variable = getattr(weight, "value", weight)  # Keras' variable wraps TensorFlow's
    if values.ndim == 0 or values.nbytes <= SLICE_BYTES:
        variable.assign(np.array(values))
        return
    rows = max(1, SLICE_BYTES * values.shape[0] // values.nbytes)
    for start in range(0, values.shape[0], rows):
        variable[start : start + rows].assign(np.array(values[start : start + rows]))


def _write_weights(path: str, scratch: str) -> None:
    """In the child: each weight of the model at `path` as `<index>.npy`, in `model.weights` order."""
    os.nice(19)  # the worker's models serve meanwhile
    import keras
    import numpy as np

    model = keras.models.load_model(path, compile=False)
    for index, weight in enumerate(model.weights):
        np.save(Path(scratch, f"{index}.npy"), np.asarray(weight))
    print(WRITTEN, len(model.weights), flush=True)


if __name__ == "__main__":
    _write_weights(sys.argv[1], sys.argv[2])
