"""Requests refused without a forward pass: counted in metrics one by one, logged as a summary.

Under overload a worker may refuse thousands of requests a second, and a log line each
would spend on logging the CPU the model needs (and bury everything else in the log). So a
refusal costs a counter increment, and the worker writes one line at most every
`interval_s` that says how many it refused since the last one, and why.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from service.telemetry import metrics
from service.threads import new_lock

log = logging.getLogger(__name__)

SUMMARY_INTERVAL_S = 1.0


class RefusalSummary:
    """Counts refusals by reason; `refused()` logs the counts when `interval_s` has passed since the last line."""

    def __init__(self, interval_s: float = SUMMARY_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self._interval_s = interval_s
        self._clock = clock
        self._lock = new_lock()  # request threads, or greenlets and the batcher's thread
        self._counts: Counter[str] = Counter()
        self._since = clock()

    def refused(self, reason: str) -> None:
        metrics.rejected_requests.labels(reason).inc()
        with self._lock:
            self._counts[reason] += 1
            if self._clock() - self._since >= self._interval_s:
                self._log_and_reset()

    def flush(self) -> None:
        """Log what was counted since the last line, if anything (at shutdown)."""
        with self._lock:
            if self._counts:
                self._log_and_reset()

    def _log_and_reset(self) -> None:
        now = self._clock()
        reasons = ", ".join(f"{reason} {count}" for reason, count in self._counts.most_common())
        log.warning(
            "refused %d requests in the last %.1f s: %s",
            self._counts.total(),
            now - self._since,
            reasons,
            extra={"event": "refusals", "refused": dict(self._counts), "seconds": round(now - self._since, 3)},
        )
        self._counts.clear()
        self._since = now
