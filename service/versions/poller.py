"""Watch MODEL_BASE_PATH and change the served versions without a restart.

TF Serving's availability-preserving order: a new version is loaded and warmed up while the old
one serves; it then takes the new requests; the old one stops taking any, and is released once
the requests it took are answered. A version that fails to load ends in END with its error and
changes nothing; it is tried again when its files change. The only version that serves is never
retired for one that does not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from service.backends.base import ServedModel
from service.threads import OsThread, lower_this_thread, new_lock
from service.version_policy import LayoutError, VersionPolicy
from service.versions.layout import files_stamp, find_versions
from service.versions.registry import ModelVersion, ModelVersions, VersionState

log = logging.getLogger(__name__)

LOADING_NICENESS = 19


class VersionPoller:
    """Brings one worker's versions in line with the base path, at every `poll_once` (or every interval once started).

    `room(path)` is held while a version loads and the ones it replaces are released (see
    service/versions/room.py: one worker at a time when memory holds no two versions).
    `on_available` and `on_released` are told of each version that starts or stops serving.
    """

    def __init__(
        self,
        base_path: str,
        policy: VersionPolicy,
        versions: ModelVersions,
        loader: Callable[[str, int], ServedModel],
        drain_timeout_s: float,
        room: Callable[[str], AbstractContextManager] = lambda path: nullcontext(),
        on_available: Callable[[ModelVersion], None] = lambda version: None,
        on_released: Callable[[ModelVersion], None] = lambda version: None,
    ):
        self._base_path = base_path
        self._policy = policy
        self._versions = versions
        self._loader = loader
        self._drain_timeout_s = drain_timeout_s
        self._room = room
        self._on_available = on_available
        self._on_released = on_released
        self._stopped = new_lock()
        self._stopped.acquire()  # released by stop()
        self._thread: OsThread | None = None

    def poll_once(self) -> None:
        try:
            found = find_versions(self._base_path)
        except LayoutError as error:
            log.warning("%s; serving versions %s meanwhile", error, sorted(self._versions.numbers()))
            return
        wanted = self._policy.select(found)
        for number in sorted(wanted, reverse=True):  # the newest first: it is the one requests go to
            stamp = files_stamp(found[number])
            if self._needs_loading(number, stamp):
                with self._room(found[number]):
                    self._load(number, found[number], stamp)
                    self._retire_unwanted(wanted)
        self._retire_unwanted(wanted)

    def start(self, interval_s: float) -> None:
        """Poll every `interval_s` in an OS thread (loading a model must not stop a gevent worker's requests).

        The thread runs at the lowest priority, and so do the threads and processes it starts (a
        new session's pool, the footprint's measuring child): a load takes the cores the
        versions serving leave idle.
        """

        def run():
            lower_this_thread(LOADING_NICENESS)
            while not self._stopped.acquire(timeout=interval_s):
                try:
                    self.poll_once()
                except Exception:
                    log.exception("checking %s for model versions failed; trying again", self._base_path)
            self._stopped.release()

        self._thread = OsThread(run, "version-poller")

    def stop(self, timeout_s: float) -> bool:
        """Stop polling; True once a load under way (if any) has ended within `timeout_s`."""
        self._stopped.release()
        return self._thread.join(timeout_s) if self._thread is not None else True

    def _needs_loading(self, number: int, stamp: tuple) -> bool:
        known = self._versions.get(number)
        if known is None:
            return True
        if known.state != VersionState.END:
            return False  # loading, serving or being released
        return not known.error or known.files != stamp  # released earlier, or broken and rewritten since

    def _load(self, number: int, path: str, stamp: tuple) -> None:
        version = self._versions.load(number, path, stamp, lambda model_path: self._loader(model_path, number))
        if version.state == VersionState.AVAILABLE:
            self._on_available(version)

    def _retire_unwanted(self, wanted: set[int]) -> None:
        available = self._versions.numbers(VersionState.AVAILABLE)
        if not available & wanted:
            return  # nothing wanted serves yet: keep what does, so requests are always answered
        for number in sorted(available - wanted):
            version = self._versions.get(number)
            self._versions.retire(number, self._drain_timeout_s)
            self._on_released(version)
