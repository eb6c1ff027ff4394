"""Turns at the forward passes of one worker, shared by the batchers of the models it serves.

Each model has its own queue and batching policy (its batcher); a batch, once formed, runs
only in a turn. At most `slots` passes run at once across all models, and when a turn frees
while batches of several models wait, it goes to the model whose passes have taken least
time so far: a model flooded with work keeps at most its share of the worker while another
has work, and takes all of it while none has (start-time fair queuing of pass seconds, as
TF Serving's shared batch scheduler takes its queues in turn). A model that was idle starts
level with the least served of the busy ones: idle time is not saved up as credit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.threads import new_lock


class PassTurns:
    """Up to `slots` forward passes at once across models; the next turn to the least served model waiting."""

    def __init__(self, slots: int, clock: Callable[[], float] = time.monotonic):
        if slots < 1:
            raise ValueError("need at least one slot")
        self.slots = slots
        self._clock = clock
        self._lock = new_lock()
        self._used: dict[str, float] = {}  # pass seconds each model has taken: its place in line
        self._running: Counter[str] = Counter()  # passes running, per model
        self._waiting: list[tuple[str, object]] = []  # (model, the gate it waits at), oldest first

    @contextmanager
    def turn(self, model: str) -> Iterator[None]:
        """Run the body in a turn of `model`'s: wait while every slot is taken and others come first."""
        self._take(model)
        started = self._clock()
        try:
            yield
        finally:
            self._give_back(model, self._clock() - started)

    def used_s(self, model: str) -> float:
        """Pass seconds `model` has taken, as the turns count them (catch-ups after idleness included)."""
        with self._lock:
            return self._used.get(model, 0.0)

    def _take(self, model: str) -> None:
        with self._lock:
            self._catch_up(model)
            if sum(self._running.values()) < self.slots and not self._waiting:
                self._running[model] += 1
                return
            gate = new_lock()  # an OS-level lock: batcher threads are OS threads, under gevent too
            gate.acquire()
            self._waiting.append((model, gate))
        gate.acquire()  # released by `_give_back`, which has counted this turn as running

    def _give_back(self, model: str, seconds: float) -> None:
        with self._lock:
            self._used[model] += seconds
            self._running[model] -= 1
            if self._waiting:
                chosen = min(range(len(self._waiting)), key=lambda index: self._used[self._waiting[index][0]])
                next_model, gate = self._waiting.pop(chosen)  # the oldest of the least served, on a tie
                self._running[next_model] += 1
                gate.release()

    def _catch_up(self, model: str) -> None:
        """A model with nothing running or waiting starts no lower than the least served busy one."""
        busy = {name for name, count in self._running.items() if count} | {name for name, _ in self._waiting}
        own = self._used.get(model, 0.0)
        if model not in busy and busy:
            own = max(own, min(self._used[name] for name in busy))
        self._used[model] = own
