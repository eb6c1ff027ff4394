"""Dynamic batching: merge the requests that arrive close together into one forward pass.

The batcher is generic: it knows nothing of Flask or TensorFlow. It calls
`predict(payloads) -> results` with the payloads of one batch, in arrival order, from
dedicated OS threads, and hands result i back to the caller of payload i.

When a batch is sent: a batch is formed as soon as one request is waiting. It first takes
everything already queued (up to `preferred_batch_size` instances), and is sent at once
when full. Otherwise its policy (batch_policy.py) decides whether to send it now or to
wait for more. A backlog therefore always yields full batches, never batches of one.

Up to `concurrent_batches` forward passes run at once, one per batcher thread, and one
thread forms a batch at a time. While a forward pass runs, the next batch is sent when it
is full; a partial one waits for the running pass to end (or, under the adaptive policy,
for its latency objective): a full batch alongside keeps the cores busy that one pass
leaves idle (on a CPU its threads wait on each other while the request threads take a
core), and a partial one would only slow both.

The queue is bounded: `submit()` refuses a request at once (QueueFull) when the instances
waiting would exceed `max_queue`. Every accepted request is answered, with its result or
with the exception its forward pass raised: when a batch of several requests fails, each
is run again alone, so one bad input fails only its own request. `close()` runs every
request accepted before it and refuses later ones with BatcherClosed.
"""

from __future__ import annotations

import collections
import logging
import queue
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import nullcontext
from typing import Any

from service.batching.admission import Admission
from service.batching.background import BackgroundLane, BackgroundWork
from service.batching.policy import BatchPolicy, FormingBatch, Observations, SendReason
from service.batching.requests import (
    BatcherClosed,
    BatcherObserver,
    BatcherStats,
    BatchOutcome,
    BatchSizeMismatch,
    DeadlineExceeded,
    PendingRequest,
    QueueFull,
)
from service.batching.turns import PassTurns
from service.threads import Completion, OsThread, new_completion, new_lock, new_queue

log = logging.getLogger(__name__)

_STOP = object()
_TIMED_OUT = object()  # the policy's wait for more requests ended without one
_PASS_ENDED = object()  # queued when a forward pass ends, to wake a thread waiting to send a partial batch
_BACKGROUND = object()  # queued when background work arrives, to wake a thread waiting for a request


class Batcher:
    def __init__(
        self,
        predict: Callable[[list], Sequence],
        policy: BatchPolicy,
        max_batch_size: int,
        max_queue: int,
        concurrent_batches: int = 1,
        preferred_batch_size: int | None = None,
        observations: Observations | None = None,
        observer: BatcherObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "batcher",
        default_budget_s: float | None = None,
        turns: PassTurns | None = None,
    ):
        """`max_batch_size` bounds a request and a batch; a batch counts as full at `preferred_batch_size`.

        `observations` is told of every arrival and pass (the adaptive policy and admission decide
        from its cost model); `observer` of every change of the queue and every pass's outcome.
        `default_budget_s` (REQUEST_TIMEOUT_MS, else LATENCY_SLO_MS) is what `admits` counts by.
        With `turns` (a worker serving several models), each pass runs in a turn taken as `name` (turns.py).
        """
        preferred_batch_size = preferred_batch_size or max_batch_size
        if not 1 <= preferred_batch_size <= max_batch_size <= max_queue or concurrent_batches < 1:
            raise ValueError("need 1 <= preferred_batch_size <= max_batch_size <= max_queue, concurrent_batches >= 1")
        self._predict = predict
        self.name = name
        self._turns = turns
        self.policy = policy
        self.observations = observations
        self._observer = observer
        self.max_batch_size = max_batch_size
        self.preferred_batch_size = preferred_batch_size
        self.max_queue = max_queue
        self.concurrent_batches = concurrent_batches
        self._clock = clock
        self._queue = new_queue()
        self._held_over: collections.deque[PendingRequest] = collections.deque()
        self._waiting: collections.deque[PendingRequest] = collections.deque()  # queued, oldest first
        self._lock = new_lock()
        self._queued_instances = 0
        self._in_flight_instances = 0
        self._passes_started = 0
        self._expected_ends: dict[int, float] = {}  # running pass (its number) -> when it should end
        self._last_pass_ended_at = 0.0
        self._forming = new_lock()  # held by the one thread forming a batch
        self._closed = False
        self._room_listeners: list[Callable[[], None]] = []
        self._background = BackgroundLane(observations, preferred_batch_size)
        self.admission = Admission(self, observations, preferred_batch_size, concurrent_batches, default_budget_s)
        self._admits = self.admission.admitted_in_time(clock())
        self.accepted_requests = 0  # since start: every request submit() queued
        self.stats = BatcherStats()
        self._threads = [OsThread(self._run, f"{name}-{i}") for i in range(concurrent_batches)]

    @property
    def _passes_running(self) -> int:
        return len(self._expected_ends)

    @property
    def running_pass_ends(self) -> Collection[float]:
        """When each running forward pass is expected to end (read under the lock, by admission)."""
        return self._expected_ends.values()

    @property
    def waiting_requests(self) -> Sequence[PendingRequest]:
        """The queued requests, oldest first (read under the lock, by admission)."""
        return self._waiting

    @property
    def queue_depth(self) -> int:
        """Instances accepted and not yet taken into a forward pass."""
        return self._queued_instances

    @property
    def room(self) -> int:
        """Instances the queue takes before it refuses (read without the lock by the workers: a hint)."""
        return self.max_queue - self._queued_instances

    @property
    def admits(self) -> int:
        """Instances the queue would take now from requests with the default budget: `room`, less those that
        would be refused as late. A hint read without the lock, brought up to date whenever the queue changes."""
        return self._admits

    def add_room_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` from a batcher thread, outside its lock, when a batch leaves the queue or a pass ends."""
        self._room_listeners.append(listener)

    def submit(
        self, payload: Any, size: int = 1, timeout_s: float | None = None, budget_s: float | None = None
    ) -> Completion:
        """Queue a request of `size` instances; wait on the returned completion for a BatchOutcome.

        Raises QueueFull when the queue is full, BatcherClosed after `close()`, and
        ValueError if `size` is not between 1 and `max_batch_size` (a request is never split).
        With `budget_s`, raises DeadlineUnreachable when waiting would make it late (see
        `Admission.check`): refused at once rather than accepted to fail late. A request still
        waiting `timeout_s` after it was queued is answered DeadlineExceeded instead of being run.
        """
        if not 1 <= size <= self.max_batch_size:
            raise ValueError(f"a request must hold 1 to {self.max_batch_size} instances, got {size}")
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            now = self._clock()
            self._check_room(size)
            if budget_s is not None:
                self.admission.check(size, budget_s, now)
            deadline = now + timeout_s if timeout_s is not None else None
            due = now + budget_s if budget_s is not None else None
            request = PendingRequest(payload, size, now, new_completion(), deadline, due)
            self._queued_instances += size
            self._in_flight_instances += size
            self.accepted_requests += 1
            self._waiting.append(request)
            if self.observations is not None:
                self.observations.arrived(request.enqueued_at, size)
            self._queue_changed()
            self._queue.put(request)  # under the lock, so nothing lands behind close()'s stop marker
        return request.completion

    def submit_background(self, work: BackgroundWork) -> None:
        """Serve `work` at a lower priority than every online request (background.py); wait on the work itself.

        Raises BatcherClosed after `close()`. Background work is bounded by its owners (a
        request's instance cap, a job's part), not by the queue.
        """
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            self._background.add(work)
            self._queue.put(_BACKGROUND)

    @property
    def background_instances(self) -> int:
        """Background instances not yet in a pass (a hint read without the lock)."""
        return self._background.instances

    def predicted_latency_s(self, size: int = 1) -> float:
        """Expected time to answer a request of `size` instances submitted now (0 without a cost model)."""
        with self._lock:
            return self.admission.predicted_latency_s(size, self._clock())

    def check_room(self, size: int = 1, budget_s: float | None = None) -> None:
        """Raise QueueFull or DeadlineUnreachable if any request of at least `size` instances would be refused now.

        Cheap, and needs no payload: the predict route calls it before it reads and decodes a
        body, so a refusal under overload costs little CPU, and `/readyz` sheds by it. With
        `budget_s`, a request that would be answered after it is refused (`submit` also refuses
        one that would make the batch it joins late, which depends on its exact size).
        """
        with self._lock:
            self._check_room(size)
            if budget_s is not None:
                self.admission.check(size, budget_s, self._clock(), joining=False)

    def check_bulk(self, size: int, budget_s: float | None = None) -> None:
        """For a request of more than one batch (service/batching/bulk.py), before any of it is queued:
        QueueFull if a full batch finds no room, DeadlineUnreachable if all its passes outlast `budget_s`."""
        with self._lock:
            self._check_room(min(size, self.preferred_batch_size))
            if budget_s is not None:
                self.admission.check_bulk(size, budget_s, self._clock())

    def _check_room(self, size: int) -> None:
        if size > self.room:
            raise QueueFull(
                f"{self._queued_instances} instances are already waiting (limit {self.max_queue})",
                self.admission.drain_seconds(self._clock()),
            )

    def full_pass_seconds(self) -> float:
        """The measured cost of a full batch (0 without a cost model)."""
        return self.admission.full_pass_seconds()

    def close(self, timeout_s: float = 30.0) -> bool:
        """Refuse new requests, answer every accepted one, stop the thread; True if it stopped in time."""
        with self._lock:
            already_closed, self._closed = self._closed, True
        if not already_closed:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout_s
        return all(thread.join(max(0.0, deadline - time.monotonic())) for thread in self._threads)

    def describe(self) -> dict:
        """The policy, what it has learned, and what it did: for the stats endpoint."""
        described = {
            **self.policy.describe(),
            "max_batch_size": self.max_batch_size,
            "preferred_batch_size": self.preferred_batch_size,
            "concurrent_batches": self.concurrent_batches,
            "queue_depth": self.queue_depth,
            **self.stats.describe(),
        }
        if self.observations is not None:
            described.update(self.observations.describe(self._clock()))
        return described

    def _queue_changed(self) -> None:
        """Update `admits`, tell the observer the queue's depth; called under the lock, so reports arrive in order."""
        self._admits = self.admission.admitted_in_time(self._clock())
        if self._observer is not None:
            self._observer.queue_changed(self._queued_instances, self._in_flight_instances)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            with self._forming:
                batch, reason, stopping = self._next_batch()
                if stopping:
                    self._queue.put(_STOP)  # for the next thread: every request before it is taken
                batch = self._without_expired(batch)
                if batch:
                    with self._lock:
                        passes_beside = self._passes_running
                        self._passes_started += 1
                        started = self._passes_started
                        instances = sum(request.size for request in batch)
                        self._expected_ends[started] = self.admission.expected_end(
                            instances, self._clock(), passes_beside > 0
                        )
                        self._admits = self.admission.admitted_in_time(self._clock())  # waits now behind this pass
            self._tell_room_listeners()  # a batch left the queue; `admits` counts its pass
            if batch:
                with self._turns.turn(self.name) if self._turns is not None else nullcontext():
                    size, seconds = self._run_batch(batch, reason)
                with self._lock:
                    self._last_pass_ended_at = self._clock()
                    del self._expected_ends[started]
                    self._in_flight_instances -= size
                    if self.observations is not None:
                        ran_alone = passes_beside == 0 and self._passes_started == started
                        self.observations.pass_ended(self._clock(), size, seconds, ran_alone)
                    self._queue_changed()  # after the cost model learned the pass: `admits` depends on it
                self._tell_room_listeners()  # a deadline's room grows when a pass ends
                if self.concurrent_batches > 1:
                    self._queue.put(_PASS_ENDED)
        # Nothing is left: submit() queues under the lock that close() takes before the stop marker.

    def _tell_room_listeners(self) -> None:
        for listener in self._room_listeners:
            listener()

    def _next_batch(self) -> tuple[list[PendingRequest], SendReason | None, bool]:
        """Block for the first request, then gather until full or until the policy says send.

        Returns the batch (empty when stopping with nothing queued), why it was sent, and
        whether the stop marker was reached. An online batch is topped up with background
        instances; with no online request, background instances may make a batch of their own.
        """
        first = self._held_over.popleft() if self._held_over else self._next_item()
        if isinstance(first, list):
            return first, SendReason.BACKGROUND, False
        if first is _STOP:
            return [], None, True
        batch, reason = self._gather(first)
        self.stats.sent_because[reason] += 1
        with self._lock:
            online = sum(request.size for request in batch)
            self._queued_instances -= online
            for _ in batch:  # the batch is the oldest requests queued, in order
                self._waiting.popleft()
            filler = self._background.fill(online, self._clock())
            self._in_flight_instances += sum(piece.size for piece in filler)
            self._queue_changed()
        stopping = reason is SendReason.SHUTDOWN
        if stopping and self._background.instances:
            self._queue.put(_STOP)  # background work accepted before close() runs first, then the stop
            stopping = False
        return batch + filler, reason, stopping

    def _next_item(self) -> Any:
        """The next online request or _STOP; or, while no online request waits, a batch of background pieces."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                pieces, recheck_s = self._background_alone(stopping=False)
                if pieces:
                    return pieces
                try:  # block for the next item, or until background work may run
                    item = self._queue.get(timeout=recheck_s)
                except queue.Empty:
                    continue
            if item is _PASS_ENDED or item is _BACKGROUND:
                continue  # look again whether background work may run
            if item is _STOP and self._background.instances:
                self._queue.put(_STOP)  # background work accepted before close() runs first
                return self._background_alone(stopping=True)[0]
            return item

    def _background_alone(self, stopping: bool) -> tuple[list[PendingRequest], float | None]:
        """A batch of background pieces if one may run now, and how long to wait before looking again."""
        with self._lock:
            now = self._clock()
            pieces = self._background.alone(now, self._passes_running, self.concurrent_batches, stopping)
            self._in_flight_instances += sum(piece.size for piece in pieces)
            recheck_s = self._background.recheck_in_s(now)
        if pieces:
            self.stats.sent_because[SendReason.BACKGROUND] += 1
        return pieces, recheck_s

    def _gather(self, first: PendingRequest) -> tuple[list[PendingRequest], SendReason]:
        """The batch that starts with `first`, and why it is sent: full, the policy's word, or shutdown."""
        batch, size = [first], first.size
        timed_out = False
        while size < self.preferred_batch_size:
            # Whatever is already queued is taken at once; only the wait for more is the policy's.
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                forming = FormingBatch(
                    size, first.enqueued_at, self._passes_running, timed_out, self._last_pass_ended_at
                )
                item = self._wait_for_more(forming)
            timed_out = item is _TIMED_OUT
            if isinstance(item, SendReason):
                return batch, item
            if item is _STOP:
                return batch, SendReason.SHUTDOWN
            if item is _PASS_ENDED or item is _BACKGROUND or timed_out:
                continue
            if size + item.size > self.preferred_batch_size:
                self._held_over.append(item)
                break
            batch.append(item)
            size += item.size
        return batch, SendReason.FULL

    def _wait_for_more(self, forming: FormingBatch) -> Any:
        """Nothing more is queued: the policy's reason to send now, else the next item or _TIMED_OUT."""
        now = self._clock()
        decision = self.policy.decide(now, forming)
        if decision.send_because is not None:
            return decision.send_because
        if decision.wait_until is None:
            return self._queue.get()  # a request, or the running pass's end
        try:
            return self._queue.get(timeout=max(0.0, decision.wait_until - now))
        except queue.Empty:
            return _TIMED_OUT

    def _without_expired(self, batch: list[PendingRequest]) -> list[PendingRequest]:
        """Answer the requests whose deadline has passed, so no forward pass is spent on them."""
        now = self._clock()
        live, expired = [], []
        for request in batch:
            (expired if request.deadline is not None and now >= request.deadline else live).append(request)
        if not expired:
            return batch
        for request in expired:
            waited_ms = 1000 * (now - request.enqueued_at)
            request.completion.fail(DeadlineExceeded(f"its deadline passed after {waited_ms:.0f} ms in the queue"))
        self.stats.expired += len(expired)
        with self._lock:
            self._in_flight_instances -= sum(request.size for request in expired)
            self._queue_changed()
        return live

    def _run_alone(self, request: PendingRequest, started_at: float) -> None:
        """After its batch failed: one request's own pass, so one bad input fails only its sender."""
        try:
            results = self._predict([request.payload])
            if len(results) != 1:
                raise BatchSizeMismatch(f"predict returned {len(results)} results for 1 request")
        except Exception as error:
            log.exception("forward pass failed for a request of %d instances, run alone", request.size)
            self.stats.failed_requests_alone += 1
            request.completion.fail(error)
        else:
            request.completion.resolve(BatchOutcome(results[0], request.size, started_at - request.enqueued_at))

    def _run_batch(self, batch: list[PendingRequest], reason: SendReason) -> tuple[int, float]:
        """Run one forward pass and answer its requests; returns (instances, seconds the pass took)."""
        size = sum(request.size for request in batch)
        started_at = self._clock()
        failed = False
        try:
            results = self._predict([request.payload for request in batch])
            if len(results) != len(batch):
                raise BatchSizeMismatch(f"predict returned {len(results)} results for {len(batch)} requests")
        except Exception as error:  # the batch fails, the thread keeps serving
            self.stats.failed_batches += 1
            failed = True
            if len(batch) == 1:
                log.exception("forward pass failed for a request of %d instances", size)
                batch[0].completion.fail(error)
            else:
                log.warning("forward pass failed for %d requests (%s); running each alone", len(batch), error)
                for request in batch:
                    self._run_alone(request, started_at)
        else:
            for request, result in zip(batch, results, strict=True):
                request.completion.resolve(BatchOutcome(result, size, started_at - request.enqueued_at))
        seconds = self._clock() - started_at
        queue_waits_s = [started_at - request.enqueued_at for request in batch]
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.instances += size
        self.stats.queue_wait_s += sum(queue_waits_s)
        if self._observer is not None:
            self._observer.batch_ran(reason, size, queue_waits_s, seconds, failed)
        return size, seconds
