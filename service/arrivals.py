"""What a worker expects to arrive next: a decaying arrival rate, and the echo of each answered batch.

A Poisson rate alone misreads closed-loop clients (users and services that send their next
request when the last one is answered): their requests come back a round trip after each
pass ends, in a bunch, and then nothing comes until the next pass ends. So besides the rate,
the estimator learns the *echo*: the fraction of a pass's answered instances that arrive
within 1/32, 1/16, ..., 1/2 and all of an echo window after that pass's end. Within that
window after a pass, the expected arrivals come from the echo (less what has already
arrived); after it, from the rate. For open-loop traffic the echo is just the rate again,
so nothing is lost by learning it.

The window is given with each pass's end (the policy uses one full pass: waiting longer
than that for more never pays), so the same bins fit a fast model on a fast machine and a
slow model on a slow one: a round trip is measured against what the model costs here.
"""

from __future__ import annotations

import bisect
import math

RATE_TIME_CONSTANT_S = 0.5  # the rate forgets a burst within a few of these
ECHO_EDGE_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # the echo's bins, as fractions of its window
DEFAULT_ECHO_WINDOW_S = 0.016
ECHO_SMOOTHING = 0.1  # weight of the newest pass in each bin's fraction


class ArrivalEstimator:
    """Fed every arrival and every pass end (times in seconds); answers how many instances to expect soon."""

    def __init__(self, time_constant_s: float = RATE_TIME_CONSTANT_S):
        self._tau = time_constant_s
        self._rate = 0.0
        self._rate_at = 0.0
        self._echo_fractions: list[float] | None = None  # per bin, learned from the passes seen so far
        self._window_start: float | None = None
        self._window_answered = 0
        self._edges = tuple(fraction * DEFAULT_ECHO_WINDOW_S for fraction in ECHO_EDGE_FRACTIONS)
        self._window_counts = [0] * len(ECHO_EDGE_FRACTIONS)
        self._window_arrived = 0

    def rate(self, now: float) -> float:
        """Instances per second, an exponentially decaying average that falls while nothing arrives."""
        return self._rate * math.exp(-max(0.0, now - self._rate_at) / self._tau)

    def arrived(self, now: float, instances: int) -> None:
        self._rate = self.rate(now) + instances / self._tau
        self._rate_at = now
        if self._window_start is not None:
            offset = now - self._window_start
            if offset < self._edges[-1]:
                self._window_counts[bisect.bisect_right(self._edges, offset)] += instances
                self._window_arrived += instances

    def pass_ended(self, now: float, answered: int, echo_window_s: float = DEFAULT_ECHO_WINDOW_S) -> None:
        """A forward pass answered `answered` instances at `now`: watch for their echo for `echo_window_s`."""
        self._close_window(now)
        self._window_start, self._window_answered = now, answered
        self._edges = tuple(fraction * echo_window_s for fraction in ECHO_EDGE_FRACTIONS)
        self._window_counts = [0] * len(ECHO_EDGE_FRACTIONS)
        self._window_arrived = 0

    def expected(self, now: float, horizon_s: float) -> float:
        """Instances expected to arrive in (now, now + horizon_s]."""
        start = self._window_start
        window_s = self._edges[-1]
        if start is None or self._echo_fractions is None or now - start >= window_s:
            return self.rate(now) * horizon_s
        offset, end = now - start, now - start + horizon_s
        by_offset = max(self._echo_cumulative(offset), self._window_arrived)
        beyond_window = max(0.0, end - window_s) * self.rate(now)
        return max(0.0, self._echo_cumulative(min(end, window_s)) - by_offset) + beyond_window

    def describe(self, now: float) -> dict:
        return {
            "rate_per_s": round(self.rate(now), 1),
            "echo_within_ms": (
                None
                if self._echo_fractions is None
                else {
                    f"{edge * 1000:.3g}": round(sum(self._echo_fractions[: index + 1]), 3)
                    for index, edge in enumerate(self._edges)
                }
            ),
        }

    def _echo_cumulative(self, offset: float) -> float:
        """Instances expected to have arrived `offset` seconds after the current window's pass ended."""
        total, lower = 0.0, 0.0
        for fraction, upper in zip(self._echo_fractions, self._edges, strict=True):
            if offset <= lower:
                break
            total += fraction * min(1.0, (offset - lower) / (upper - lower))
            lower = upper
        return total * self._window_answered

    def _close_window(self, now: float) -> None:
        """Fold the bins of the current window that were watched to their end into the learned fractions."""
        if self._window_start is None or self._window_answered == 0:
            return
        watched = sum(1 for edge in self._edges if self._window_start + edge <= now)
        observed = [count / self._window_answered for count in self._window_counts[:watched]]
        if self._echo_fractions is None:  # the first window: bins not watched to their end start from the rate
            lowers = (0.0, *self._edges[:-1])
            self._echo_fractions = observed + [
                self.rate(now) * (upper - lower) / self._window_answered
                for lower, upper in zip(lowers[watched:], self._edges[watched:], strict=True)
            ]
            return
        for index, fraction in enumerate(observed):
            self._echo_fractions[index] += ECHO_SMOOTHING * (fraction - self._echo_fractions[index])
