"""The poller: new versions loaded before they serve, old ones released after, broken ones never in charge."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.version_policy import VersionPolicy
from service.versions.poller import VersionPoller
from service.versions.registry import ModelVersions, VersionState


class BaseDir:
    """A MODEL_BASE_PATH whose versions hold one model file each."""

    def __init__(self, path: Path):
        self.path = path

    def add_version(self, number: int, content: bytes = b"weights") -> None:
        (self.path / str(number)).mkdir(exist_ok=True)
        (self.path / str(number) / "model.onnx").write_bytes(content)

    def model(self, number: int) -> str:
        return str(self.path / str(number) / "model.onnx")


@pytest.fixture
def base(tmp_path) -> BaseDir:
    return BaseDir(tmp_path)


@pytest.fixture
def version_one_serving(base, make_model) -> ModelVersions:
    """Versions whose version 1, in the base path, serves."""
    base.add_version(1)
    versions = ModelVersions("m")
    versions.add(1, base.model(1), make_model(1), 0.1)
    return versions


class Recorder:
    """A loader of scaling models (a file reading `broken` fails to load), and what the poller told."""

    def __init__(self, make_model):
        self.make_model = make_model
        self.events: list[tuple] = []

    def load(self, path: str, version: int):
        self.events.append(("load", version))
        with open(path, "rb") as model_file:
            if model_file.read() == b"broken":
                raise ValueError("not a model")
        return self.make_model(version, path)

    @contextmanager
    def room(self, path: str):
        self.events.append(("room", path.split("/")[-2]))
        yield
        self.events.append(("room released",))


def poller_for(base, versions, recorder, policy="latest") -> VersionPoller:
    return VersionPoller(
        str(base.path),
        VersionPolicy.parse(policy),
        versions,
        recorder.load,
        drain_timeout_s=10,
        room=recorder.room,
        on_available=lambda version: recorder.events.append(("available", version.number)),
        on_released=lambda version: recorder.events.append(("released", version.number)),
    )


def test_a_new_version_serves_once_loaded_and_the_old_one_is_released_after(base, make_model, version_one_serving):
    recorder, versions = Recorder(make_model), version_one_serving
    poller = poller_for(base, versions, recorder)
    poller.poll_once()
    assert recorder.events == []  # nothing new
    base.add_version(2)
    poller.poll_once()
    assert recorder.events == [("room", "2"), ("load", 2), ("available", 2), ("released", 1), ("room released",)]
    assert versions.serving().version == 2
    assert [(s["version"], s["state"]) for s in versions.statuses()] == [("2", "AVAILABLE"), ("1", "END")]


def test_a_broken_version_changes_nothing_until_its_files_change(base, make_model, version_one_serving):
    recorder, versions = Recorder(make_model), version_one_serving
    poller = poller_for(base, versions, recorder)
    base.add_version(2, b"broken")
    poller.poll_once()
    poller.poll_once()
    assert [event for event in recorder.events if event[0] == "load"] == [("load", 2)]  # not retried unchanged
    assert versions.serving().version == 1
    assert versions.statuses(2)[0]["status"]["error_message"] == "ValueError: not a model"
    base.add_version(2, b"fixed weights")
    poller.poll_once()
    assert versions.serving().version == 2 and versions.get(1).state == VersionState.END


def test_the_only_version_serving_stays_even_when_its_directory_is_gone(base, make_model):
    recorder = Recorder(make_model)
    versions = ModelVersions("m")
    versions.add(1, base.model(1), make_model(1), 0.1)
    base.add_version(2, b"broken")  # version 1's directory is gone; version 2 cannot serve
    poller_for(base, versions, recorder).poll_once()
    assert versions.serving().version == 1


def test_policy_all_serves_every_version_and_releases_a_removed_one(base, make_model):
    recorder = Recorder(make_model)
    for number in (1, 2):
        base.add_version(number)
    versions = ModelVersions("m")
    poller = poller_for(base, versions, recorder, policy="all")
    poller.poll_once()
    assert versions.numbers(VersionState.AVAILABLE) == {1, 2}
    (base.path / "1" / "model.onnx").unlink()
    (base.path / "1").rmdir()
    poller.poll_once()
    assert versions.numbers(VersionState.AVAILABLE) == {2}
    # A released version whose directory comes back is served again.
    base.add_version(1)
    poller.poll_once()
    assert versions.numbers(VersionState.AVAILABLE) == {1, 2}


def test_requests_in_flight_finish_on_the_old_version_while_new_ones_get_the_new(base, make_model, version_one_serving):
    recorder, versions = Recorder(make_model), version_one_serving
    poller = poller_for(base, versions, recorder)
    base.add_version(2)
    with versions.lease() as in_flight:
        polling = threading.Thread(target=poller.poll_once)
        polling.start()
        deadline = time.monotonic() + 10
        while versions.get(1).state != VersionState.UNLOADING and time.monotonic() < deadline:
            time.sleep(0.001)
        assert versions.serving().version == 2
        assert in_flight.version == 1 and polling.is_alive()  # released only once this request is answered
    polling.join(10)
    assert not polling.is_alive() and versions.get(1).state == VersionState.END


def test_started_it_polls_until_stopped(base, make_model):
    recorder = Recorder(make_model)
    base.add_version(1)
    versions = ModelVersions("m")
    poller = poller_for(base, versions, recorder)
    poller.start(interval_s=0.01)
    deadline = time.monotonic() + 10
    while not versions.numbers(VersionState.AVAILABLE) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert poller.stop(timeout_s=10)
    assert versions.numbers(VersionState.AVAILABLE) == {1}
