"""Footprint measurement: real in a child process, then served from the cache keyed by the model's hash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from service.backends import children
from service.backends.footprint import FootprintError, measure_footprint, model_digest


def test_digest_follows_the_content(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"weights v1")
    first = model_digest(str(model))
    model.write_bytes(b"weights v2")
    assert model_digest(str(model)) != first
    saved_model = tmp_path / "saved"
    (saved_model / "variables").mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"graph")
    (saved_model / "variables" / "v.data").write_bytes(b"values")
    assert len(model_digest(str(saved_model))) == 64


@pytest.mark.slow
def test_measured_in_a_child_then_cached(demo_model_path, tmp_path):
    cache = tmp_path / "footprints.json"
    measured = measure_footprint(str(demo_model_path), (1, 2, 4), str(cache))
    assert not measured.cached
    # TensorFlow alone is hundreds of MiB; the small digits CNN adds little.
    assert measured.runtime_bytes > 200 * 1024**2
    assert 0 < measured.model_bytes < measured.runtime_bytes
    again = measure_footprint(str(demo_model_path), (1, 2, 4), str(cache))
    assert again.cached and again.worker_bytes == measured.worker_bytes
    assert len(json.loads(cache.read_text())) == 1


@pytest.mark.slow
def test_an_onnx_model_is_measured_with_onnxruntime_not_tensorflow(demo_model_path, demo_onnx_path, tmp_path):
    cache = str(tmp_path / "footprints.json")
    with_tensorflow = measure_footprint(str(demo_model_path), (1, 2, 4), cache)
    with_onnxruntime = measure_footprint(str(demo_onnx_path), (1, 2, 4), cache)
    assert not with_onnxruntime.cached
    # A child that imported TensorFlow would weigh at least as much as TensorFlow's own.
    assert with_onnxruntime.runtime_bytes < with_tensorflow.runtime_bytes / 2
    assert 0 < with_onnxruntime.model_bytes < with_onnxruntime.runtime_bytes


def test_cache_hit_needs_no_child(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"not really a model")
    cache = tmp_path / "footprints.json"
    key = f"{model_digest(str(model))}/batches=1,2/backend=auto"
    cache.write_text(json.dumps({key: {"runtime_bytes": 100, "model_bytes": 20}}))
    found = measure_footprint(str(model), (1, 2), str(cache))
    assert found.cached and found.worker_bytes == 120


def test_unloadable_model_reports_the_childs_error_in_one_line(tmp_path):
    model = tmp_path / "broken.keras"
    model.write_bytes(b"not a zip file")
    with pytest.raises(FootprintError) as raised:
        measure_footprint(str(model), (1,), str(tmp_path / "cache.json"))
    message = str(raised.value)
    assert message.startswith(f"{str(model)!r} cannot be loaded: ModelLoadError: ") and "\n" not in message
    assert "is not a readable .keras archive" in message and "Traceback" in raised.value.output


def test_the_child_runs_where_service_is_importable_without_an_install(tmp_path, monkeypatch):
    # In the container image nothing is installed: `python -m service.backends.footprint` finds
    # `service` only through PYTHONPATH (the dev venv's editable install hides this).
    runs = []

    def run(command, env, timeout_s):
        runs.append((command, env))
        raise FootprintError("stop here")

    monkeypatch.setattr(children, "run_process", run)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    model = tmp_path / "m.keras"
    model.write_bytes(b"weights")
    with pytest.raises(FootprintError):
        measure_footprint(str(model), (1,), str(tmp_path / "cache.json"))
    [(command, env)] = runs
    assert command[1:3] == ["-m", "service.backends.footprint"]
    root, kept = env["PYTHONPATH"].split(os.pathsep)
    assert (Path(root) / "service" / "__init__.py").is_file() and (Path(root) / "wsgi.py").is_file(), root
    assert kept == "/elsewhere"
