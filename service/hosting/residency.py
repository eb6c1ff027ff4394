"""Which models stay loaded when a worker's models do not all fit its memory budget (MODEL_MEMORY_MB).

A model not loaded is loaded on its first request; to make room, the least recently used
models with no request in flight are unloaded first (Ray Serve's model multiplexing, which
neither TF Serving nor Triton has). A model with requests in flight is never unloaded: when
the idle ones do not free enough, the load waits for none and is refused, to be retried. Loads
are rationed to a share of the worker's time (`LoadRation`), so the models loaded keep serving
at their pace when requests for the others come faster than they can load.
Sizes are the models' measured footprints (service/backends/footprint.py), as the planner's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model as the budget sees it."""

    name: str
    size_bytes: int
    last_used_s: float  # time.monotonic() of its last request
    in_flight: int  # requests leased to its versions, queued or running


def models_to_unload(budget_bytes: int, needed_bytes: int, loaded: list[LoadedModel]) -> list[str] | None:
    """The models to unload, least recently used first, for `needed_bytes` more to fit the budget; [] when it
    fits already, None when unloading every idle model would not make room (or the model is larger than it)."""
    free_bytes = budget_bytes - sum(model.size_bytes for model in loaded)
    chosen = []
    for model in sorted((model for model in loaded if model.in_flight == 0), key=lambda model: model.last_used_s):
        if free_bytes >= needed_bytes:
            break
        chosen.append(model.name)
        free_bytes += model.size_bytes
    return chosen if free_bytes >= needed_bytes else None


class LoadRation:
    """Loads on demand take at most `share` of a worker's time, as their measured durations count it.

    A load competes with the models serving for the cores and, in Python, for the interpreter:
    when requests for models not loaded come faster than loads can follow (the budget holds too
    few of the models in use), unrationed loads would slow every request of the worker. A token
    bucket of load seconds, filled at `share` per second and holding a few loads' worth, admits a
    load when it holds the expected duration (the mean of the last ones); otherwise `admit` says
    how long until it will, for the refused request's Retry-After.
    """

    BURST_LOADS = 4  # loads the bucket holds: a few models may load at once after a quiet spell

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic):
        self._share = share
        self._clock = clock
        self._expected_s = 0.0  # unknown before the first load: the first ones are admitted
        self._tokens_s = 0.0
        self._filled_at = clock()

    def admit(self) -> float:
        """0 and a load's expected seconds taken when a load may start; else the seconds until one may."""
        now = self._clock()
        cap = self.BURST_LOADS * self._expected_s
        self._tokens_s = min(cap, self._tokens_s + (now - self._filled_at) * self._share)
        self._filled_at = now
        if self._tokens_s >= self._expected_s:
            self._tokens_s -= self._expected_s
            return 0.0
        return (self._expected_s - self._tokens_s) / self._share

    def loaded(self, seconds: float) -> None:
        """A load took `seconds`: counted for what it took rather than what was expected, and expected next."""
        self._tokens_s -= seconds - self._expected_s
        first = self._expected_s == 0.0
        self._expected_s = seconds if first else 0.7 * self._expected_s + 0.3 * seconds
        if first:
            self._tokens_s = self.BURST_LOADS * seconds - seconds  # the first loads were free: start nearly full
