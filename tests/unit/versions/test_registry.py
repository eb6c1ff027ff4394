"""One worker's versions: states, which version answers, leases that hold a retiring version, labels."""

from __future__ import annotations

import threading
import time

import pytest

from service.errors import NotFound
from service.versions.registry import ModelVersions, VersionState


def served(versions: ModelVersions, **named) -> int:
    return versions.serving(**named).version


def test_the_highest_available_version_answers_requests_that_name_none(make_model):
    versions = ModelVersions("m")
    versions.add(1, "/base/1", make_model(1), 0.5)
    assert versions.load(3, "/base/3", (), lambda path: make_model(3)).state == VersionState.AVAILABLE
    assert served(versions) == 3 and served(versions, version=1) == 1
    assert [s["version"] for s in versions.statuses()] == ["3", "1"]
    assert versions.statuses(3) == [
        {"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]


def test_a_version_that_fails_to_load_ends_with_its_error_and_replaces_nothing(make_model):
    versions = ModelVersions("m")
    versions.add(1, "/base/1", make_model(1), 0.5)

    def broken(path):
        raise OSError("truncated file")

    failed = versions.load(2, "/base/2", ("stamp",), broken)
    assert failed.state == VersionState.END and failed.files == ("stamp",)
    assert versions.statuses(2)[0]["status"] == {"error_code": "UNKNOWN", "error_message": "OSError: truncated file"}
    assert served(versions) == 1
    with pytest.raises(NotFound, match="version 2 is END, not served; versions served: 1"):
        versions.serving(version=2)
    with pytest.raises(NotFound, match="has no version 5"):
        versions.statuses(5)


def test_a_retiring_version_takes_no_request_and_is_released_when_its_last_one_is_answered(make_model):
    versions = ModelVersions("m")
    versions.add(1, "/base/1", make_model(1), 0.5)
    versions.add(2, "/base/2", make_model(2), 0.5)
    drained = []
    with versions.lease(version=1) as model:
        retiring = threading.Thread(target=lambda: drained.append(versions.retire(1, drain_timeout_s=30)))
        retiring.start()
        deadline = time.monotonic() + 10
        while versions.get(1).state != VersionState.UNLOADING and time.monotonic() < deadline:
            time.sleep(0.001)
        assert versions.get(1).state == VersionState.UNLOADING
        with pytest.raises(NotFound, match="UNLOADING"):
            versions.serving(version=1)
        assert served(versions) == 2  # new requests go to the other version meanwhile
        assert model.version == 1 and not drained  # the request in flight still has its version
    retiring.join(10)
    assert drained == [True]
    assert versions.get(1).state == VersionState.END and versions.get(1).model is None


def test_a_version_is_released_after_the_drain_timeout_even_with_requests_running(make_model):
    versions = ModelVersions("m")
    versions.add(1, "/base/1", make_model(1), 0.5)
    with versions.lease() as model:
        assert versions.retire(1, drain_timeout_s=0.01) is False
        assert model.version == 1  # the request keeps its own reference and finishes on it
    assert versions.get(1).in_flight == 0


def test_labels_route_to_their_version_while_it_serves(make_model):
    versions = ModelVersions("m", {"stable": 1, "canary": 2})
    versions.add(1, "/base/1", make_model(1), 0.5)
    assert served(versions, label="stable") == 1
    with pytest.raises(NotFound, match="version 2 \\(label 'canary'\\)"):
        versions.serving(label="canary")
    with pytest.raises(NotFound, match="labels: canary, stable"):
        versions.serving(label="beta")
    versions.add(2, "/base/2", make_model(2), 0.5)
    assert served(versions, label="canary") == 2
