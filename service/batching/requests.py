"""What goes into the batcher and what comes out: queued requests, their outcomes and refusals, and the counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.batching.policy import SendReason
from service.threads import Completion


class QueueFull(Exception):
    """The worker's queue holds `max_queue` instances already; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no more requests."""


class DeadlineExceeded(Exception):
    """The request's deadline passed while it waited; it was taken out before its forward pass."""


class BatchSizeMismatch(RuntimeError):
    """`predict` returned a different number of results than it was given payloads."""


@dataclass(frozen=True)
class BatchOutcome:
    """What one caller gets back: its own result and the batch it was served in."""

    result: Any
    batch_size: int
    queue_wait_s: float


@dataclass
class PendingRequest:
    payload: Any
    size: int
    enqueued_at: float
    completion: Completion = field(repr=False)
    deadline: float | None = None  # on the batcher's clock: answered DeadlineExceeded if still queued then
    due: float | None = None  # on the batcher's clock: admitted because its answer was predicted by then


class BatcherObserver(Protocol):
    """Told of the queue and of every forward pass, for metrics (service.telemetry.metrics.BatchMetrics)."""

    def queue_changed(self, queued_instances: int, in_flight_instances: int) -> None: ...

    def batch_ran(
        self, reason: SendReason, instances: int, queue_waits_s: list[float], forward_s: float, failed: bool
    ) -> None: ...


@dataclass
class BatcherStats:
    """Counters since start; read them for tests and reports, they are not locked."""

    batches: int = 0
    requests: int = 0
    instances: int = 0
    failed_batches: int = 0
    failed_requests_alone: int = 0  # after their batch failed, retried alone, and failed again
    expired: int = 0  # requests whose deadline passed in the queue, answered DeadlineExceeded
    queue_wait_s: float = 0.0  # summed over requests, from submit() to the start of their pass
    sent_because: Counter = field(default_factory=Counter)  # SendReason -> batches

    def describe(self) -> dict:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "instances": self.instances,
            "failed_batches": self.failed_batches,
            "failed_requests_alone": self.failed_requests_alone,
            "expired": self.expired,
            "mean_batch_size": round(self.instances / self.batches, 3) if self.batches else None,
            "mean_queue_wait_ms": round(1000 * self.queue_wait_s / self.requests, 3) if self.requests else None,
            "sent_because": {reason.value: self.sent_because[reason] for reason in SendReason},
        }
