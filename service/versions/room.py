"""Memory for a version swap: a new version loads beside the old one, so a worker briefly holds both.

When the machine's available memory holds a copy of the new version for every worker, the
workers swap at once. Otherwise they take turns, through a lock file the service's workers
share: one worker loads, switches and releases the old version before the next one starts, so
the service keeps serving and memory never holds more than one extra copy. The new version's
footprint is measured as at start (service/backends/footprint.py), by the first worker to take
the lock; the others read it from the footprint cache.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.backends.footprint import Footprint

log = logging.getLogger(__name__)


class SwapRoom:
    """`room(path)`: held while this worker loads the model at `path` beside the version it serves."""

    def __init__(
        self,
        lock_path: str,
        workers: int,
        ram_headroom: float,
        measure: Callable[[str], Footprint],
        available_bytes: Callable[[], int],
    ):
        self._lock_path = lock_path
        self._workers = workers
        self._ram_headroom = ram_headroom
        self._measure = measure
        self._available_bytes = available_bytes

    def fits_at_once(self, path: str) -> bool:
        """Whether every worker can load the model at `path` at the same time, keeping RAM_HEADROOM free."""
        try:
            extra_bytes = self._measure(path).model_bytes
        except Exception as error:  # it will fail to load too, with its reason; take turns meanwhile
            log.warning("could not measure %s before loading it: %s", path, error)
            return False
        budget_bytes = self._available_bytes() * (1 - self._ram_headroom)
        fits = self._workers * extra_bytes <= budget_bytes
        log.info(
            "%s needs %.0f MiB more per worker; %d workers %s",
            path, extra_bytes / 2**20, self._workers, "swap at once" if fits else "take turns (memory holds no more)",
        )  # fmt: skip
        return fits

    @contextmanager
    def __call__(self, path: str) -> Iterator[None]:
        if self._workers == 1:  # no one to take turns with, and the load goes ahead whatever it measures
            yield
            return
        with open(self._lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # also one measurement at a time: the others read its cache
            try:
                if self.fits_at_once(path):
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
