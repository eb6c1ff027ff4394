"""What a worker expects to arrive next: a decaying arrival rate, and the echo of each answered batch.

A Poisson rate alone misreads closed-loop clients (users and services that send their next
request when the last one is answered): their requests come back a round trip after each
pass ends, in a bunch, and then nothing comes until the next pass ends. So besides the rate,
the estimator learns the *echo*: the fraction of a pass's answered instances that arrive
within 1/32, 1/16, ..., 1/2 and all of an echo window after that pass's end. Within that
window after a pass, the expected arrivals come from the echo (less what has already
arrived); after it, from the rate. For open-loop traffic the echo is just the rate again,
so nothing is lost by learning it.

The policy must still tell the two apart: a closed loop's clients come back whatever the
policy does, so one who is not back yet is still coming; open-loop arrivals owe it nothing.
So after each window the estimator asks whether the echo placed that window's arrivals
(their shares per bin, counted from the pass's end) clearly better than an even spread,
and calls the loop closed while the echo has won most recent windows. Arrivals that do not
follow the answers, however bursty, are spread evenly on average, and the echo learned
from them too: it does not win clearly.

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
ECHO_SMOOTHING = 0.1  # weight of the newest window in each bin's fraction (after the first 10) and in the vote
CLEAR_WIN = 2.0  # the echo wins a window when an even spread's squared error is more than this times the echo's


class ArrivalEstimator:
    """Fed every arrival and every pass end (times in seconds); answers how many instances to expect soon."""

    def __init__(self, time_constant_s: float = RATE_TIME_CONSTANT_S):
        self._tau = time_constant_s
        self._rate = 0.0
        self._rate_at = 0.0
        self._echo_fractions: list[float] | None = None  # per bin, learned from the passes seen so far
        self._echo_arrivals: list[float] = []  # per bin, smoothed instances that arrived in it
        self._echo_exposure: list[float] = []  # per bin, smoothed answered instances it watched for
        self._echo_windows: list[int] = []  # per bin, windows that watched it
        self._echo_wins = 0.0  # smoothed share of recent windows the echo placed clearly better than an even spread
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

    @property
    def closed_loop(self) -> bool:
        """Whether arrivals follow answers: in most recent windows the echo placed them clearly better than evenly."""
        return self._echo_wins > 0.5

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

    def still_coming(self, now: float, horizon_s: float) -> float:
        """In a closed loop, the last pass's clients expected back in (now, now + horizon_s]; else 0.

        Unlike `expected`, it counts them as a known crowd: each comes back once, so whoever is
        not back yet is still coming, late or not, in the echo's shape. 0 after the echo window:
        clients slower than a full pass are left to the rate.
        """
        start = self._window_start
        if start is None or self._echo_fractions is None or not self.closed_loop or now - start >= self._edges[-1]:
            return 0.0
        window_s, offset = self._edges[-1], now - start
        end = min(window_s, offset + horizon_s)
        whole = self._echo_cumulative(window_s)
        still_out = max(0.0, min(whole, self._window_answered) - self._window_arrived)
        rest = whole - self._echo_cumulative(offset)
        if rest > 0:
            return still_out * (self._echo_cumulative(end) - self._echo_cumulative(offset)) / rest
        return still_out * (end - offset) / (window_s - offset)  # later than ever: over what is left of the window

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
            "closed_loop": self.closed_loop,
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
        """Fold what the current window saw into the learned fractions, then let the echo and an even spread vote.

        Each bin's fraction is its arrivals over the answered instances it watched, both smoothed,
        so a window that answered one request while a crowd arrived weighs by its one, and the
        first 10 windows weigh alike. A bin watched for part of its span (the next pass ended
        first) counts for that part: else a worker whose passes are shorter than its window would
        never learn its late bins. The first window starts what it did not watch from the rate.
        """
        if self._window_start is None or self._window_answered == 0:
            return
        elapsed_s, lowers = now - self._window_start, (0.0, *self._edges[:-1])
        watched = [
            min(1.0, max(0.0, (elapsed_s - low) / (high - low))) for low, high in zip(lowers, self._edges, strict=True)
        ]
        if self._echo_fractions is None:
            self._echo_arrivals = [
                count + self.rate(now) * (1 - part) * (high - low)
                for count, part, low, high in zip(self._window_counts, watched, lowers, self._edges, strict=True)
            ]
            self._echo_exposure = [float(self._window_answered)] * len(self._edges)
            self._echo_windows = [1] * len(self._edges)
        else:
            self._vote(watched, lowers)
            for index, part in enumerate(watched):
                if part == 0:
                    continue
                self._echo_windows[index] += 1
                weight = max(ECHO_SMOOTHING, 1 / self._echo_windows[index])
                self._echo_arrivals[index] += weight * (self._window_counts[index] - self._echo_arrivals[index])
                self._echo_exposure[index] += weight * (part * self._window_answered - self._echo_exposure[index])
        self._echo_fractions = [
            arrivals / exposure for arrivals, exposure in zip(self._echo_arrivals, self._echo_exposure, strict=True)
        ]

    def _vote(self, watched: list[float], lowers: tuple[float, ...]) -> None:
        """Did the echo, as learned before this window, place its arrivals clearly better than an even spread?

        Only the shares of the window's arrivals per bin are compared, not their number: what marks
        a closed loop is that its clients arrive when the echo says, counted from a pass's end.
        """
        arrived = sum(self._window_counts)
        echo = [part * fraction for part, fraction in zip(watched, self._echo_fractions, strict=True)]
        even = [part * (upper - lower) for part, lower, upper in zip(watched, lowers, self._edges, strict=True)]
        if not arrived or not sum(echo):
            return
        echo_error = even_error = 0.0
        for count, echo_part, even_part in zip(self._window_counts, echo, even, strict=True):
            echo_error += (count / arrived - echo_part / sum(echo)) ** 2
            even_error += (count / arrived - even_part / sum(even)) ** 2
        echo_won = even_error > CLEAR_WIN * echo_error
        self._echo_wins += ECHO_SMOOTHING * (echo_won - self._echo_wins)
