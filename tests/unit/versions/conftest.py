"""Model versions that answer differently, with no framework: version v multiplies its input by v."""

from __future__ import annotations

import pytest

from service.backends.base import ServedModel
from service.backends.signature import ModelSignature, TensorInfo

SIGNATURE = ModelSignature((TensorInfo("x", "float32", (2,)),), (TensorInfo("y", "float32", (2,)),))


def scaling_model(version: int, path: str = "") -> ServedModel:
    return ServedModel("m", version, SIGNATURE, lambda arrays: {"y": arrays["x"] * version}, (1, 2), path=path)


@pytest.fixture
def make_model():
    return scaling_model
