"""Admission: whether a request can still be answered in time, predicted from the queue and the pass costs.

A request brings a budget (its deadline, or the server's objective). It is refused at once
(DeadlineUnreachable, a 503 with Retry-After) when the queue ahead of it and its own pass would
answer it after that budget, or when it would join a batch of requests admitted for an earlier
time and, by making that pass longer, answer them late. Predictions come from the cost model
(batching/cost_model.py) and the passes running now; without a cost model nothing is refused.
`admitted_in_time` turns the same rule into a count for the workers: how many more requests
with the server's default budget the queue takes (web/backpressure.py parks connections at 0).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Protocol

from service.batching.policy import Observations


class DeadlineUnreachable(Exception):
    """Refused at the door: the queue ahead and its own pass would outlast the request's budget."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueuedRequest(Protocol):
    size: int
    due: float | None  # admitted because its answer was predicted by then


class QueueView(Protocol):
    """What admission reads of the batcher's queue, under the batcher's lock."""

    @property
    def queue_depth(self) -> int: ...  # instances queued, not yet in a pass

    @property
    def room(self) -> int: ...  # instances the queue takes before it is full

    @property
    def running_pass_ends(self) -> Collection[float]: ...  # when each running pass is expected to end

    @property
    def waiting_requests(self) -> Sequence[QueuedRequest]: ...  # queued, oldest first


class Admission:
    """Predicts answer times for one batcher's queue and refuses what would be late."""

    def __init__(
        self,
        queue: QueueView,
        observations: Observations | None,
        preferred_batch_size: int,
        concurrent_batches: int,
        default_budget_s: float | None,
    ):
        self._queue = queue
        self._observations = observations
        self._full = preferred_batch_size
        self._concurrent_batches = concurrent_batches
        self.default_budget_s = default_budget_s

    def check(self, size: int, budget_s: float, now: float, joining: bool = True) -> None:
        """Refuse what waiting would make late, and (`joining`) what would make the requests it joins late.

        A request that waits behind nothing is always taken, and so is one whose budget is shorter
        than its own pass alone (the model's limit, not the queue's). Otherwise it is refused when
        its predicted answer comes after `budget_s`, or when it would join a batch of requests
        admitted for an earlier time and, by making that pass longer, answer them after it.
        """
        queue = self._queue
        if self._observations is None or not (queue.queue_depth or queue.running_pass_ends):
            return
        answered_at = now + self.predicted_latency_s(size, now)
        if answered_at - now > budget_s >= self._observations.cost_model.seconds(size):
            late_s, why = answered_at - now - budget_s, f"beyond its {1000 * budget_s:.0f} ms"
        elif not joining:
            return
        else:
            joined_due = self._earliest_due_joined(size)
            if joined_due is None or answered_at <= joined_due:
                return
            if answered_at <= now + self.predicted_latency_s(0, now):  # padded to the same size: no harm done
                return
            late_s, why = answered_at - joined_due, "later than the requests whose batch it would join"
        raise DeadlineUnreachable(
            f"{queue.queue_depth} instances queued, {len(queue.running_pass_ends)} passes running: an answer "
            f"would take about {1000 * (answered_at - now):.0f} ms, {why}",
            late_s + self.full_pass_seconds(),
        )

    def check_bulk(self, size: int, budget_s: float, now: float) -> None:
        """Refuse a request of `size` instances, more than a batch, whose passes would outlast `budget_s`:
        its first full batch waits as any batch would, and each later one takes a full pass. A lower bound
        under online load, which its instances only fill the room of (background.py); its deadline still holds."""
        if self._observations is None:
            return
        full_pass_s = self.full_pass_seconds()
        passes = math.ceil(size / self._full)
        answered_in_s = self.predicted_latency_s(self._full, now) + (passes - 1) * full_pass_s
        if answered_in_s > budget_s:
            raise DeadlineUnreachable(
                f"{size} distinct instances take {passes} passes: an answer would take about "
                f"{1000 * answered_in_s:.0f} ms, beyond its {1000 * budget_s:.0f} ms",
                answered_in_s - budget_s + full_pass_s,
            )

    def admitted_in_time(self, now: float) -> int:
        """How many more single instances the default budget admits: the queue's room, cut where `check`
        would start refusing (binary search: the predicted wait grows with the queue)."""
        room, budget_s = self._queue.room, self.default_budget_s
        if budget_s is None or self._observations is None or room <= 0:
            return room
        if budget_s < self._observations.cost_model.seconds(1):
            return room  # shorter than a lone pass: the model's limit, and admission never refuses for it
        queued = self._queue.queue_depth
        late, on_time = room, -1  # instances ahead beyond `queued`: the first found late, the last found on time
        if not (queued or self._queue.running_pass_ends):
            on_time = 0  # a request behind nothing is always taken
        while late - on_time > 1:
            middle = (late + on_time) // 2
            if self.predicted_latency_s(1, now, queued + middle) > budget_s:
                late = middle
            else:
                on_time = middle
        return late

    def predicted_latency_s(self, size: int, now: float, ahead: int | None = None) -> float:
        """When a request of `size` queued now would be answered: the running passes end as expected, the
        queue ahead (`ahead` instances, by default those queued) leaves in full batches, full ones on the
        first free thread (slowed by the passes beside them), a partial one once every pass has ended, as
        the policies send them."""
        if self._observations is None:
            return 0.0
        cost, full = self._observations.cost_model, self._full
        ahead = self._queue.queue_depth if ahead is None else ahead
        batches = [full] * (ahead // full)
        rest = ahead % full
        batches += [rest + size] if rest + size <= full else [rest, size]
        pass_ends = self._queue.running_pass_ends
        free_at = [now] * (self._concurrent_batches - len(pass_ends)) + [max(now, end) for end in pass_ends]
        free_at.sort()
        ends = now
        for batch in filter(None, batches):
            start = free_at.pop(0) if batch >= full else free_at.pop()
            ends = start + cost.seconds(batch, beside=any(t > start for t in free_at))
            free_at = sorted([*free_at, ends]) if batch >= full else [ends] * (len(free_at) + 1)
        return ends - now

    def drain_seconds(self, now: float) -> float:
        """How long the queue as it is takes to empty: the time to answer the last request in it."""
        return self.predicted_latency_s(0, now) if self._queue.queue_depth else 0.0

    def full_pass_seconds(self) -> float:
        """The measured cost of a full batch (0 without a cost model)."""
        return self._observations.cost_model.seconds(self._full) if self._observations else 0.0

    def expected_end(self, instances: int, now: float, beside: bool) -> float:
        """When a pass of `instances` starting now should end (now without a cost model)."""
        if self._observations is None:
            return now
        return now + self._observations.cost_model.seconds(instances, beside)

    def _earliest_due_joined(self, size: int) -> float | None:
        """The earliest due time of the requests queued in the partial batch a request of `size` would join."""
        rest = self._queue.queue_depth % self._full
        if not rest or rest + size > self._full:
            return None  # it starts a batch of its own
        dues, counted = [], 0
        for request in reversed(self._queue.waiting_requests):
            if counted >= rest:
                break
            counted += request.size
            if request.due is not None:
                dues.append(request.due)
        return min(dues, default=None)
