"""Turns at the forward passes of one worker, shared by the batchers of the models it serves.

Each model has its own queue and batching policy (its batcher); a batch, once formed, runs
only in a turn. At most `slots` passes run at once across all models, and when a turn frees
while batches of several models wait, it goes to the model whose passes have taken least
time so far (start-time fair queuing of pass seconds, as TF Serving's shared batch scheduler
takes its queues in turn): a model flooded with work keeps at most its share of the worker
while another has work, and takes all of it while none has. A model that was idle starts
level with the least served of the busy ones: idle time is not saved up as credit. With two
slots or more, one is kept for the others while one is in use, so a light model's pass never
waits for a heavy model's pass to end."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.threads import new_lock


class PassTurns:
    """Up to `slots` forward passes at once across models; the next turn to the least served model waiting.

    A model that runs a pass already does not take the last free slot while another model is in
    use (it has a pass running or waiting, or had one within twice the pass the model asking would
    run): a flooded model then never holds every slot, and a pass of another model starts at once
    beside its passes instead of waiting for one of them to end. The window is twice the model's
    own measured pass, so it scales with the machine and the model.
    """

    def __init__(self, slots: int, clock: Callable[[], float] = time.monotonic):
        if slots < 1:
            raise ValueError("need at least one slot")
        self.slots = slots
        self._clock = clock
        self._lock = new_lock()
        self._used: dict[str, float] = {}  # pass seconds each model has taken: its place in line
        self._running: Counter[str] = Counter()  # passes running, per model
        self._waiting: list[tuple[str, object]] = []  # (model, the gate it waits at), oldest first
        self._active_at: dict[str, float] = {}  # when each model last took or gave back a turn
        self._pass_s: dict[str, float] = {}  # each model's recent pass duration (a moving average)

    @contextmanager
    def turn(self, model: str) -> Iterator[None]:
        """Run the body in a turn of `model`'s: wait while the slots it may take are taken and others come first."""
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
            self._active_at[model] = self._clock()
            if not self._waiting and self._may_run(model):
                self._running[model] += 1
                return
            gate = new_lock()  # an OS-level lock: batcher threads are OS threads, under gevent too
            gate.acquire()
            self._waiting.append((model, gate))
            self._grant()  # those waiting may be models that may not run now: this one may, at once
        while not gate.acquire(timeout=self._reserved_s(model)):
            with self._lock:  # the slot kept for the others: free to take once they have gone quiet
                if (model, gate) in self._waiting and self._may_run(model) and self._first_of(model):
                    self._waiting.remove((model, gate))
                    self._running[model] += 1
                    return
        # released by `_give_back`, which has counted this turn as running

    def _give_back(self, model: str, seconds: float) -> None:
        with self._lock:
            self._used[model] += seconds
            self._running[model] -= 1
            self._active_at[model] = self._clock()
            previous = self._pass_s.get(model)
            self._pass_s[model] = seconds if previous is None else 0.8 * previous + 0.2 * seconds
            self._grant()

    def _grant(self) -> None:
        """The free slots to the models waiting that may take them, the least served first (the oldest on a tie)."""
        while True:
            runnable = [index for index, (waiter, _) in enumerate(self._waiting) if self._may_run(waiter)]
            if not runnable:
                return
            chosen = min(runnable, key=lambda index: self._used[self._waiting[index][0]])
            model, gate = self._waiting.pop(chosen)
            self._running[model] += 1
            gate.release()

    def _may_run(self, model: str) -> bool:
        """Whether `model` may take a slot now: one is free, and unless it runs none yet, not the last one while
        another model is in use."""
        free = self.slots - sum(self._running.values())
        if free <= 0:
            return False
        return free > 1 or self._running[model] == 0 or self._others_quiet_for_s(model) <= 0

    def _others_quiet_for_s(self, model: str) -> float:
        """How long until every other model counts as quiet for `model` (0: they are; inf: one is busy)."""
        window_s = 2 * self._pass_s.get(model, 0.0)
        now, until = self._clock(), 0.0
        for other, active_at in self._active_at.items():
            if other == model:
                continue
            if self._running[other] or any(waiter == other for waiter, _ in self._waiting):
                return float("inf")
            until = max(until, active_at + window_s - now)
        return until

    def _reserved_s(self, model: str) -> float:
        """How long a waiting turn sleeps before it looks again at a slot kept for the others (-1: until woken)."""
        with self._lock:
            quiet_in_s = self._others_quiet_for_s(model)
        if quiet_in_s == float("inf"):
            return 2 * self._pass_s.get(model, 0.0) or -1  # a give-back wakes it, or it looks again after this
        return max(quiet_in_s, 0.0) or -1

    def _first_of(self, model: str) -> bool:
        """Whether `model` is the least served of the models waiting that may run (it would get the next turn)."""
        runnable = [waiter for waiter, _ in self._waiting if self._may_run(waiter)]
        return not runnable or min(runnable, key=lambda waiter: self._used[waiter]) == model

    def _catch_up(self, model: str) -> None:
        """A model with nothing running or waiting starts no lower than the least served busy one."""
        busy = {name for name, count in self._running.items() if count} | {name for name, _ in self._waiting}
        own = self._used.get(model, 0.0)
        if model not in busy and busy:
            own = max(own, min(self._used[name] for name in busy))
        self._used[model] = own
