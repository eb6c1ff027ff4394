"""Work served at a lower priority than online requests: bulk requests and background jobs.

Its instances never wait in the online queue. They fill the room online batches leave (up to the
compiled size a batch runs at anyway, and beyond it while the pass would take at most
FILL_SLOWDOWN longer), and the worker runs passes of them alone only while online traffic is so
quiet that such a pass would hardly ever delay an online request (BACKGROUND_INTRUSION). A pass
cannot be interrupted, so that rule is what keeps online latency as it was; with no online
traffic at all, background work runs in full batches, as many at once as online batches may.

Payloads are arrays keyed by input name with the instances along the first axis; a work's
result holds one output row per instance, in order. A work fails whole: if any of its instances
fails or expires, or if it is cancelled, and only once none of its instances is in a pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from service.backends.base import Arrays
from service.batching.policy import Observations
from service.batching.requests import BatchOutcome, PendingRequest
from service.threads import Completion, new_completion, new_lock

# A filled batch may take this much longer than the online batch alone would (by the cost model). Jobs
# may slow online requests 1.2x at half load. 0.1 is what the fairness of bulk requests was measured
# with (1.5-1.6x p99); 0.2 doubled a job's progress at half load, but was not measured beside bulk
# requests on its own (BENCHMARKS.md).
FILL_SLOWDOWN = 0.1

# Passes of background work alone start only while fewer online instances than this are expected
# to arrive during one (by the arrival rate): the share of online requests such a pass delays.
BACKGROUND_INTRUSION = 0.02

# Priorities: higher is served first.
BULK_PRIORITY = 1
JOB_PRIORITY = 0


class Cancelled(Exception):
    """The work was cancelled; what was not yet in a pass never ran."""


class BackgroundWork:
    """`count` instances to serve at `priority`; wait on it for a BatchOutcome of them all.

    Thread-safe: rows are taken and answered by batcher threads while its owner waits,
    watches `done`, or cancels.
    """

    def __init__(
        self,
        inputs: Arrays,
        count: int,
        priority: int = JOB_PRIORITY,
        deadline: float | None = None,
        completion: Completion | None = None,
        payload_of: Callable[[Arrays], Any] = lambda rows: rows,
    ):
        if count < 1:
            raise ValueError("background work needs at least one instance")
        self.inputs = inputs
        self._payload_of = payload_of  # what the batcher's forward pass takes, for some of the rows
        self.count = count
        self.priority = priority
        self.deadline = deadline  # on the batcher's clock, for each of its pieces
        self.done = 0  # instances answered
        self.largest_batch = 0
        self._taken = 0  # instances handed to passes
        self._parts: dict[int, Arrays] = {}  # first row -> output rows
        self._error: BaseException | None = None
        self._completion = completion or new_completion()
        self._lock = new_lock()
        self._queue_wait_s: float | None = None
        self._settled = False

    @property
    def untaken(self) -> int:
        """Instances not yet handed to a pass (0 once the work failed or was cancelled)."""
        return 0 if self._error is not None or self._settled else self.count - self._taken

    def take(self, size: int, now: float) -> PendingRequest:
        """The next `size` untaken instances as a request whose answer comes back to this work."""
        with self._lock:
            start = self._taken
            self._taken += size
        rows = {name: array[start : start + size] for name, array in self.inputs.items()}
        return PendingRequest(self._payload_of(rows), size, now, _Piece(self, start, size), self.deadline)

    def cancel(self) -> None:
        """Run none of the instances not yet in a pass; the work fails with Cancelled once those in one end."""
        self._failed(Cancelled("cancelled"), 0)

    def wait(self, timeout_s: float | None = None) -> BatchOutcome:
        return self._completion.wait(timeout_s)

    def _answered(self, start: int, size: int, outcome: BatchOutcome) -> None:
        with self._lock:
            if self._settled:
                return
            self._parts[start] = outcome.result
            self.done += size
            self.largest_batch = max(self.largest_batch, outcome.batch_size)
            if self._queue_wait_s is None:
                self._queue_wait_s = outcome.queue_wait_s
            self._settle()

    def _failed(self, error: BaseException, size: int) -> None:
        with self._lock:
            if self._settled:
                return
            if self._error is None:
                self._error = error
            self.done += size  # answered, with an error
            self._settle()

    def _settle(self) -> None:
        """Under the lock: answer the owner once no instance handed out is still in a pass."""
        in_passes = self._taken - self.done
        if self._error is not None:
            if in_passes == 0:
                self._settled = True
                self._completion.fail(self._error)
        elif self.done == self.count:
            self._settled = True
            parts = [self._parts[start] for start in sorted(self._parts)]
            result = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
            self._completion.resolve(BatchOutcome(result, self.largest_batch, self._queue_wait_s or 0.0))


class _Piece:
    """The completion of one piece of a work: hands its answer back to the work."""

    def __init__(self, work: BackgroundWork, start: int, size: int):
        self._work, self._start, self._size = work, start, size

    def resolve(self, outcome: BatchOutcome) -> None:
        self._work._answered(self._start, self._size, outcome)

    def fail(self, error: BaseException) -> None:
        self._work._failed(error, self._size)

    def wait(self, timeout_s: float | None = None):
        raise TypeError("wait on the BackgroundWork, not on one of its pieces")


class BackgroundLane:
    """The background works of one batcher, highest priority first, then oldest; used under the batcher's lock."""

    def __init__(self, observations: Observations | None, preferred_batch_size: int):
        self._observations = observations
        self._preferred = preferred_batch_size
        self._works: list[tuple[int, int, BackgroundWork]] = []  # (-priority, arrival number, work)
        self._arrivals = itertools.count()

    def add(self, work: BackgroundWork) -> None:
        self._works.append((-work.priority, next(self._arrivals), work))
        self._works.sort(key=lambda entry: entry[:2])

    @property
    def instances(self) -> int:
        """Background instances not yet handed to a pass."""
        return sum(work.untaken for _, _, work in self._works)

    def fill(self, online_instances: int, now: float) -> list[PendingRequest]:
        """Background pieces to add to an online batch of `online_instances`: the room it leaves, at almost no cost."""
        room = self._fill_target(online_instances) - online_instances
        return self._take(room, now) if room > 0 else []

    def alone(
        self, now: float, passes_running: int, concurrent_batches: int, stopping: bool = False
    ) -> list[PendingRequest]:
        """A batch of background pieces to run now with no online request; [] while online traffic may need the worker.

        `stopping`: the batcher is closing and no online request is left, so the rest runs regardless.
        """
        if stopping:
            return self._take(self._preferred, now)
        if not self._works or passes_running >= concurrent_batches or not self._online_is_quiet(now):
            return []
        if passes_running > 0 and self.instances < self._preferred:
            return []  # beside a pass, only a full batch pays (as for online batches)
        return self._take(self._preferred, now)

    def recheck_in_s(self, now: float) -> float | None:
        """How long a batcher thread may block before background work should be looked at again; None: no work."""
        self._drop_finished()
        if not self._works:
            return None
        if self._observations is None:
            return 0.001
        return max(self._observations.cost_model.full_pass_seconds(), 0.001)

    def _online_is_quiet(self, now: float) -> bool:
        if self._observations is None:
            return True
        expected = self._observations.arrivals.rate(now) * self._observations.cost_model.full_pass_seconds()
        return expected < BACKGROUND_INTRUSION

    def _fill_target(self, online_instances: int) -> int:
        """The largest batch an online batch of `online_instances` may grow to, by the cost model."""
        if self._observations is None:
            return self._preferred
        cost_model = self._observations.cost_model
        target = cost_model.padded(online_instances)
        affordable = cost_model.seconds(online_instances) * (1 + FILL_SLOWDOWN)
        for size in cost_model.sizes:
            if target < size <= self._preferred and cost_model.seconds(size) <= affordable:
                target = size
        return min(target, self._preferred) if online_instances <= self._preferred else online_instances

    def _take(self, room: int, now: float) -> list[PendingRequest]:
        self._drop_finished()
        pieces = []
        for _, _, work in self._works:
            if room <= 0:
                break
            size = min(room, work.untaken)
            if size > 0:
                pieces.append(work.take(size, now))
                room -= size
        return pieces

    def _drop_finished(self) -> None:
        self._works = [entry for entry in self._works if entry[2].untaken > 0]
