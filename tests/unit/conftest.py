"""The fast inner loop (`make unit`: the unit tests not marked slow) must not load TensorFlow; and the app serving
several models, which the tests of several parts share.

A test that needs it (a real model, TensorFlow's own messages to compare with) is marked slow and
imports it inside; code under test that does not need TensorFlow must not import it.
"""

from __future__ import annotations

import sys

import pytest

from service.app import create_app
from service.settings import Settings
from tests.support import write_scaling_onnx


def pytest_sessionfinish(session, exitstatus):
    if session.config.option.markexpr == "not slow" and "tensorflow" in sys.modules and exitstatus == 0:
        session.exitstatus = 1
        sys.stderr.write(
            "\nTensorFlow was imported by a unit test not marked slow (or by the code it tests): "
            "mark the test slow, or keep the import out of the code that does not need it\n"
        )


@pytest.fixture
def repository(tmp_path):
    """Two models in Triton's layout: `double` (y = 2x, its own queue of 64) and `triple` (y = 3x)."""
    root = tmp_path / "repository"
    write_scaling_onnx(root / "double" / "1" / "model.onnx", 2.0)
    write_scaling_onnx(root / "triple" / "1" / "model.onnx", 3.0)
    (root / "double" / "settings.env").write_text("MAX_QUEUE=64\n")
    return root


@pytest.fixture
def many_models_app(repository, tmp_path):
    """An app serving the two models of `repository`, without Gunicorn."""
    settings = Settings(
        model_repository=str(repository),
        jobs_db=str(tmp_path / "jobs.sqlite3"),
        batch_policy="fixed",
        max_batch_size=8,
        max_queue=32,
        model_poll_s=0,
    )
    app = create_app(settings)
    yield app
    app.extensions["model_server"].close()
