"""A worker serving MODEL_BASE_PATH in-process: versions, labels, status, the cache, and a swap at a poll.

The versions are tiny ONNX models (version v answers v x its input), loaded by the real backend.
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from pathlib import Path

import pytest

from service.app import create_app
from service.backends.base import ModelLoadError


@pytest.fixture
def base(tmp_path, add_onnx_version):
    root = tmp_path / "scaler"
    for number in (1, 2):
        add_onnx_version(root, number)
    return root


@pytest.fixture
def versioned_settings(settings, base):
    return dataclasses.replace(
        settings,
        model_name="",
        model_base_path=str(base),
        model_version_policy="all",
        model_version_labels="stable=1,canary=2,next=3",
        model_poll_s=0,  # the tests poll themselves
        cache_max_bytes=1 << 20,
    )


@pytest.fixture
def versioned_app(versioned_settings):
    app = create_app(versioned_settings)
    yield app
    app.extensions["model_server"].close()


def predicted(client, path: str) -> float:
    answer = client.post(path, json={"instances": [[1.0, 1.0]]})
    assert answer.status_code == 200, answer.json
    return answer.json["predictions"][0][0]


def test_every_route_reaches_the_version_it_names(versioned_app):
    client = versioned_app.test_client()
    assert predicted(client, "/v1/models/scaler:predict") == 2.0  # the highest
    assert predicted(client, "/v1/models/scaler/versions/1:predict") == 1.0
    assert predicted(client, "/v1/models/scaler/labels/stable:predict") == 1.0
    assert predicted(client, "/v1/models/scaler/labels/canary:predict") == 2.0
    missing = client.post("/v1/models/scaler/labels/next:predict", json={"instances": [[1.0, 1.0]]})
    assert missing.status_code == 404 and "has no version 3 (label 'next')" in missing.json["error"]
    unknown = client.post("/v1/models/scaler/labels/beta:predict", json={"instances": [[1.0, 1.0]]})
    assert unknown.status_code == 404 and "labels: canary, next, stable" in unknown.json["error"]
    v2 = client.post("/v2/models/scaler/versions/1/infer", json={
        "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}]
    })  # fmt: skip
    assert v2.json["outputs"][0]["data"] == [1.0, 1.0] and v2.json["model_version"] == "1"
    assert client.get("/v1/models/scaler/labels/canary/metadata").json["model_spec"]["version"] == "2"
    v2_metadata = client.get("/v2/models/scaler").json
    assert v2_metadata["versions"] == ["1", "2"] and v2_metadata["platform"] == "onnxruntime_onnx"


def test_the_status_lists_every_version_and_the_cache_keeps_versions_apart(versioned_app):
    client = versioned_app.test_client()
    status = client.get("/v1/models/scaler").json["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
    for _ in range(2):  # the second time from the cache, whole answers included
        assert predicted(client, "/v1/models/scaler/versions/1:predict") == 1.0
        assert predicted(client, "/v1/models/scaler/versions/2:predict") == 2.0
    repeat = client.post("/v1/models/scaler/versions/2:predict", json={"instances": [[1.0, 1.0]]})
    assert repeat.headers["X-Batch-Size"] == "0"  # it did come from the cache


def test_a_new_version_serves_after_a_poll_and_a_broken_one_replaces_nothing(versioned_settings, add_onnx_version):
    app = create_app(dataclasses.replace(versioned_settings, model_version_policy="latest"))
    server = app.extensions["model_server"]
    client = app.test_client()
    base = Path(versioned_settings.model_base_path)
    try:
        assert predicted(client, "/predict") == 2.0
        add_onnx_version(base, 3)
        server.sole.poller.poll_once()
        assert predicted(client, "/predict") == 3.0
        (base / "4").mkdir()
        (base / "4" / "model.onnx").write_bytes(b"half a file")
        server.sole.poller.poll_once()
        assert predicted(client, "/predict") == 3.0
        status = {s["version"]: s for s in client.get("/v1/models/scaler").json["model_version_status"]}
        assert {version: s["state"] for version, s in status.items()} == {
            "4": "END", "3": "AVAILABLE", "2": "END",
        }  # fmt: skip
        assert "cannot load ONNX model" in status["4"]["status"]["error_message"]
        assert status["3"]["status"] == {"error_code": "OK", "error_message": ""}
    finally:
        server.close()


def test_the_runtime_is_frozen_and_a_released_version_is_collected(versioned_settings, add_onnx_version):
    gc.unfreeze()
    app = create_app(dataclasses.replace(versioned_settings, model_version_policy="latest"))
    server = app.extensions["model_server"]
    try:
        assert gc.get_freeze_count() > 0, "the runtime's objects are out of the collector's walks"
        released = weakref.ref(server.sole.versions.latest())
        add_onnx_version(Path(versioned_settings.model_base_path), 3)
        server.sole.poller.poll_once()
        assert server.sole.versions.latest().version == 3
        assert released() is None, "the old version's objects were collected"
    finally:
        server.close()


def test_a_base_path_with_no_version_that_loads_stops_the_worker_with_each_reason(versioned_settings, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no numeric version directory"):
        create_app(dataclasses.replace(versioned_settings, model_base_path=str(empty)))
    (empty / "7").mkdir()
    (empty / "7" / "model.onnx").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="version 7: ModelLoadError: cannot load ONNX model"):
        create_app(dataclasses.replace(versioned_settings, model_base_path=str(empty)))


def test_a_worker_starting_past_a_broken_newest_version_serves_the_last_good_one(versioned_settings, add_onnx_version):
    base = Path(versioned_settings.model_base_path)
    for broken in (3, 4):
        (base / str(broken)).mkdir()
        (base / str(broken) / "model.onnx").write_bytes(b"truncated")
    app = create_app(dataclasses.replace(versioned_settings, model_version_policy="latest"))
    server = app.extensions["model_server"]
    client = app.test_client()
    try:
        assert predicted(client, "/predict") == 2.0  # 4 and 3 do not load; 2 is the newest that does
        status = {s["version"]: s for s in client.get("/v1/models/scaler").json["model_version_status"]}
        assert {version: s["state"] for version, s in status.items()} == {"4": "END", "3": "END", "2": "AVAILABLE"}
        assert "cannot load ONNX model" in status["4"]["status"]["error_message"]
        add_onnx_version(base, 4)  # the broken newest version rewritten whole
        server.sole.poller.poll_once()
        assert predicted(client, "/predict") == 4.0
        status = {s["version"]: s["state"] for s in client.get("/v1/models/scaler").json["model_version_status"]}
        assert status == {"4": "AVAILABLE", "3": "END", "2": "END"}  # the fallback retired once 4 serves
    finally:
        server.close()
