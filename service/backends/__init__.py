"""The model backends, behind one interface (`Backend`, service/backends/base.py) that the batcher calls
through `ServedModel`. Adding a backend is one module implementing `Backend` and one line in BACKENDS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from service.backends.base import Backend, ModelLoadError, ServedModel
from service.backends.onnx import OnnxBackend
from service.backends.tensorflow import TensorFlowBackend

BACKENDS: tuple[Backend, ...] = (OnnxBackend(), TensorFlowBackend())


def backend_for(path: str, choice: str = "auto") -> Backend:
    """The backend named `choice` (MODEL_BACKEND), or with "auto" the first that loads `path`.

    Raises ModelLoadError if the backend chosen does not load such a path, or none does.
    """
    for backend in BACKENDS:
        if choice in ("auto", backend.name) and backend.can_load(path):
            return backend
    if choice != "auto":
        hint = " (scripts/convert_to_onnx.py converts Keras models and SavedModels)" if choice == "onnx" else ""
        raise ModelLoadError(f"MODEL_BACKEND={choice} does not serve {path!r}{hint}")
    names = ", ".join(backend.name for backend in BACKENDS)
    raise ModelLoadError(f"MODEL_PATH={path!r} is no model that a backend here loads ({names})")


def load_served_model(
    path: str,
    name: str,
    version: int,
    batch_sizes: Sequence[int],
    backend_choice: str = "auto",
    device: str | None = None,
    gently: bool = False,
) -> ServedModel:
    """Load the model at `path` with its backend, on `device` (its CPU lane), and wrap its forward pass for serving.

    `gently`: beside models that serve (`Backend.load`).

    Raises ModelLoadError if the path is missing or the model cannot be served.
    """
    if not os.path.exists(path):
        raise ModelLoadError(f"MODEL_PATH={path!r} does not exist; build the demo model with `make demo-model`")
    backend = backend_for(path, backend_choice)
    signature, forward = backend.load(path, device, gently)
    return ServedModel(name, version, signature, forward, batch_sizes, platform=backend.platform, path=path)
