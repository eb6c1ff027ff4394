"""One worker's versions of its model: each one's state, which of them serve, and the labels.

States are TF Serving's (START, LOADING, AVAILABLE, UNLOADING, END). A request leases the
version it is served by (`lease`) for as long as it runs, so a version being retired stops
taking requests at once but is released only when the last one it took has been answered:
in-flight requests finish on the version they started on. A version that failed to load
ends in END with its error, and never takes the place of one that works.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.backends.base import ServedModel
from service.errors import NotFound
from service.threads import new_lock, os_sleep

log = logging.getLogger(__name__)

DRAIN_CHECK_S = 0.005


class VersionState(enum.IntEnum):
    """TF Serving's `ModelVersionStatus.State`, with its numbers."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class ModelVersion:
    number: int
    path: str
    state: VersionState = VersionState.START
    model: ServedModel | None = None
    error: str = ""
    files: tuple = ()  # what the files were when it was loaded: a failed version is tried again when they change
    in_flight: int = 0
    load_s: float | None = None

    def describe(self) -> dict:
        """TF Serving's `ModelVersionStatus` in its JSON form."""
        error_code = "UNKNOWN" if self.error else "OK"
        return {
            "version": str(self.number),
            "state": self.state.name,
            "status": {"error_code": error_code, "error_message": self.error},
        }


class ModelVersions:
    """The versions of the model `name`: the highest AVAILABLE one answers requests that name none.

    Thread-safe: requests lease versions from request threads or greenlets while the poller's OS
    thread loads and retires them.
    """

    def __init__(self, name: str, labels: dict[str, int] | None = None, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.labels = dict(labels or {})
        self._versions: dict[int, ModelVersion] = {}
        self._lock = new_lock()
        self._clock = clock

    def add(self, number: int, path: str, model: ServedModel, load_s: float, files: tuple = ()) -> None:
        """Serve an already loaded and warmed-up `model` as version `number`."""
        with self._lock:
            self._versions[number] = ModelVersion(number, path, VersionState.AVAILABLE, model, "", files, 0, load_s)

    def load(self, number: int, path: str, files: tuple, loader: Callable[[str], ServedModel]) -> ModelVersion:
        """Load, warm up (`loader`) and serve version `number`; on failure it ends in END with the error.

        Nothing is served by it before `loader` returns: the model comes back warmed up.
        """
        version = ModelVersion(number, path, VersionState.LOADING, files=files)
        with self._lock:
            self._versions[number] = version
        started = self._clock()
        try:
            model = loader(path)
        except Exception as error:
            log.error("version %d of %s (%s) failed to load: %s", number, self.name, path, error)
            with self._lock:
                version.state, version.error = VersionState.END, f"{type(error).__name__}: {error}"
            return version
        with self._lock:
            version.model, version.load_s, version.state = model, self._clock() - started, VersionState.AVAILABLE
        log.info("version %d of %s is available (loaded and warmed up in %.1f s)", number, self.name, version.load_s)
        return version

    def retire(self, number: int, drain_timeout_s: float) -> bool:
        """Stop serving version `number`; release it once its requests are answered. True if they all were in time.

        After `drain_timeout_s` it is released anyway: the requests still running hold their own
        reference to the model and finish on it.
        """
        with self._lock:
            version = self._versions[number]
            version.state = VersionState.UNLOADING
        deadline = self._clock() + drain_timeout_s
        while version.in_flight and self._clock() < deadline:
            os_sleep(DRAIN_CHECK_S)
        drained = version.in_flight == 0
        with self._lock:
            version.model, version.state = None, VersionState.END
        log.info("version %d of %s is released%s", number, self.name, "" if drained else " with requests running")
        return drained

    @contextmanager
    def lease(self, version: int | None = None, label: str | None = None) -> Iterator[ServedModel]:
        """The model serving a request for `version` or `label` (neither: the latest), held until it is answered."""
        with self._lock:
            served = self._find(version, label)
            served.in_flight += 1
        try:
            yield served.model
        finally:
            with self._lock:
                served.in_flight -= 1

    def serving(self, version: int | None = None, label: str | None = None) -> ServedModel:
        """The model of `version` or `label` (neither: the latest available); NotFound saying what is served."""
        with self._lock:
            return self._find(version, label).model

    def in_flight(self) -> int:
        """Requests leased to any version, queued or running."""
        with self._lock:
            return sum(version.in_flight for version in self._versions.values())

    def latest(self) -> ServedModel:
        return self.serving()

    def numbers(self, state: VersionState | None = None) -> set[int]:
        """The versions known (in `state`, if given)."""
        with self._lock:
            return {v.number for v in self._versions.values() if state is None or v.state == state}

    def get(self, number: int) -> ModelVersion | None:
        with self._lock:
            return self._versions.get(number)

    def statuses(self, version: int | None = None) -> list[dict]:
        """Every version's status (or `version`'s), newest first; NotFound for a version never seen."""
        with self._lock:
            if version is not None:
                if version not in self._versions:
                    raise NotFound(f"model {self.name!r} has no version {version}; {self._served_text()}")
                return [self._versions[version].describe()]
            return [self._versions[number].describe() for number in sorted(self._versions, reverse=True)]

    def version_of(self, label: str) -> int:
        """The version `label` names; NotFound listing the labels."""
        if label not in self.labels:
            known = ", ".join(sorted(self.labels)) or "none"
            raise NotFound(f"model {self.name!r} has no version labelled {label!r}; labels: {known}")
        return self.labels[label]

    def _find(self, version: int | None, label: str | None) -> ModelVersion:
        if label is not None:
            version = self.version_of(label)
        if version is None:
            available = [v for v in self._versions.values() if v.state == VersionState.AVAILABLE]
            if not available:
                raise NotFound(f"model {self.name!r} has no version available; {self._served_text()}")
            return max(available, key=lambda v: v.number)
        found = self._versions.get(version)
        via = f" (label {label!r})" if label is not None else ""
        if found is None:
            raise NotFound(f"model {self.name!r} has no version {version}{via}; {self._served_text()}")
        if found.state != VersionState.AVAILABLE:
            served = self._served_text()
            raise NotFound(f"model {self.name!r} version {version}{via} is {found.state.name}, not served; {served}")
        return found

    def _served_text(self) -> str:
        available = sorted(v.number for v in self._versions.values() if v.state == VersionState.AVAILABLE)
        return f"versions served: {', '.join(map(str, available)) or 'none'}"
