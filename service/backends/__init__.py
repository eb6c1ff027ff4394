"""The model backends, behind one interface (`Backend`, service/backends/base.py) that the batcher calls
through `ServedModel`. Adding a backend is one module implementing `Backend` and one line in BACKENDS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from service.backends.base import Backend, ModelLoadError, ServedModel
from service.backends.tensorflow import TensorFlowBackend

BACKENDS: tuple[Backend, ...] = (TensorFlowBackend(),)


def backend_for(path: str) -> Backend:
    """The first backend that loads `path`; ModelLoadError if none does."""
    for backend in BACKENDS:
        if backend.can_load(path):
            return backend
    names = ", ".join(backend.name for backend in BACKENDS)
    raise ModelLoadError(f"MODEL_PATH={path!r} is no model that a backend here loads ({names})")


def load_served_model(path: str, name: str, version: int, batch_sizes: Sequence[int]) -> ServedModel:
    """Load the model at `path` with its backend and wrap its forward pass for serving.

    Raises ModelLoadError if the path is missing or the model cannot be served.
    """
    if not os.path.exists(path):
        raise ModelLoadError(f"MODEL_PATH={path!r} does not exist; build the demo model with `make demo-model`")
    signature, forward = backend_for(path).load(path)
    return ServedModel(name, version, signature, forward, batch_sizes)
