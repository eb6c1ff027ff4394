"""Shared fixtures: settings, a fake model that needs no TensorFlow, and the app built on them."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from service.app import create_app
from service.backends.base import ServedModel
from service.backends.signature import ModelSignature, TensorInfo
from service.settings import Settings
from tests.support import rows, write_scaling_onnx


class RecordingForward:
    """A numpy forward pass (y = 2x) that records the padded batch sizes it ran, and can be gated."""

    def __init__(self):
        self.batch_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_with: Exception | None = None

    def __call__(self, arrays):
        self.entered.set()
        self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        self.batch_sizes.append(len(arrays["x"]))
        return {"y": arrays["x"] * 2}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        model_name="fake",
        jobs_db=str(tmp_path / "jobs.sqlite3"),
        batch_policy="fixed",
        max_batch_size=8,
        batch_timeout_ms=2,
        max_queue=16,
        max_body_bytes=4096,
        max_request_instances=100,
    )


@pytest.fixture
def fake_forward() -> RecordingForward:
    return RecordingForward()


@pytest.fixture
def fake_model(settings, fake_forward) -> ServedModel:
    signature = ModelSignature(inputs=(TensorInfo("x", "float32", (3,)),), outputs=(TensorInfo("y", "float32", (3,)),))
    return ServedModel("fake", 1, signature, fake_forward, settings.padded_batch_sizes())


@pytest.fixture
def app(settings, fake_model):
    app = create_app(settings, fake_model)
    yield app
    app.extensions["model_server"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_rows():
    return rows


def as_float32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = PROJECT_ROOT / "models" / "digits.keras"


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    """The demo digits model, built by the project's own script if it is missing."""
    if not DEMO_MODEL.exists():
        subprocess.run([sys.executable, "scripts/build_demo_model.py"], cwd=PROJECT_ROOT, check=True)
    return DEMO_MODEL


@pytest.fixture(scope="session")
def demo_onnx_path(demo_model_path, tmp_path_factory) -> Path:
    """The demo model converted to ONNX by the project's own script (in a child: tf2onnx patches NumPy)."""
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    command = [
        sys.executable,
        "scripts/convert_to_onnx.py",
        str(demo_model_path),
        "--output",
        str(path),
        "--check",
        "0",
    ]
    subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def demo_holdout(demo_model_path):
    """The held-out images and labels the demo model never saw in training."""
    with np.load(demo_model_path.with_name("digits_holdout.npz")) as data:
        return data["images"], data["labels"]


@pytest.fixture(scope="session")
def redis_url():
    """A real Redis server on 127.0.0.1 for the whole test run (scripts/local_redis.py)."""
    from scripts.local_redis import LocalRedis

    with LocalRedis() as url:
        yield url


@pytest.fixture
def redis_client(redis_url):
    """A client of that server, its database emptied before each test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def add_onnx_version():
    """`add(base, number)`: version `number` of MODEL_BASE_PATH `base`, answering `number` x its input."""

    def add(base: Path, number: int, factor: float | None = None) -> Path:
        path = base / str(number) / "model.onnx"
        write_scaling_onnx(path, float(number if factor is None else factor))
        return path

    return add
