"""What went wrong with a request, answered: one table for every protocol and every layer.

A refusal of the server's (the queue full, a deadline that cannot be met, a worker not ready or
stopping) is a 503 with Retry-After, counted under its reason and logged only in the summary; the
model's refusal of an input is 422; a deadline that passed is 504; a client's mistake is the
ApiError it raised; anything else is a 500 logged with its traceback, never a client's mistake.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

from werkzeug.exceptions import HTTPException

from service.backends.base import InputRejected
from service.batching.admission import DeadlineUnreachable
from service.batching.requests import BatcherClosed, DeadlineExceeded, QueueFull
from service.errors import ApiError, GatewayTimeout, ServiceUnavailable, UnprocessableContent
from service.telemetry import metrics

log = logging.getLogger(__name__)


class Refusals(Protocol):
    """Where refusals are counted (service/telemetry/refusals.py, RefusalSummary)."""

    def refused(self, reason: str) -> None: ...


class CountsRefusals(Protocol):
    refusals: Refusals


class NotReady(Exception):
    """The model is not warmed up yet, or the worker is shutting down."""


# The server's refusals (503 + Retry-After): the reason label they are counted under, and what the client reads.
REFUSALS: dict[type[Exception], tuple[str, str]] = {
    QueueFull: ("queue_full", "this worker's queue is full"),
    DeadlineUnreachable: ("deadline_unreachable", "the deadline cannot be met"),
    BatcherClosed: ("shutting_down", "this worker takes no more requests"),
    NotReady: ("not_ready", "the model is not ready yet or the worker is shutting down"),
}

# What else a request's work can raise, and how it is answered: the error class and what the message begins with.
ANSWERS: dict[type[Exception], tuple[type[ApiError], str]] = {
    InputRejected: (UnprocessableContent, "the model rejected this input"),
    DeadlineExceeded: (GatewayTimeout, "the request was not run"),
}


def api_error_for(error: BaseException, server: CountsRefusals | None = None) -> ApiError:
    """The answer to `error`, for every protocol: an ApiError as it is, the server's refusals as 503,
    the model's and the deadline's as ANSWERS says, an HTTP error of Flask's with its code, and
    anything else as a 500 that is logged with its traceback (a client mistake never gets here)."""
    if isinstance(error, ApiError):
        return error
    if type(error) in REFUSALS and server is not None:
        return refused(server, error)
    if type(error) in ANSWERS:
        answer, prefix = ANSWERS[type(error)]
        if isinstance(error, DeadlineExceeded):
            metrics.rejected_requests.labels("deadline").inc()
        return answer(f"{prefix}: {error}")
    if isinstance(error, HTTPException):
        allowed = getattr(error, "valid_methods", None)
        headers = {"Allow": ", ".join(allowed)} if allowed else None
        return ApiError(f"{error.name}: {error.description}", headers, status=error.code or 500)
    log.error("unexpected error", exc_info=error)
    return ApiError(f"internal error: {type(error).__name__}")


@contextlib.contextmanager
def forward_pass_failures() -> Iterator[None]:
    """Around running a request: what the tables answer passes through; anything else failed its forward pass (500)."""
    try:
        yield
    except (ApiError, *REFUSALS, *ANSWERS):
        raise
    except Exception as error:
        raise ApiError(f"the forward pass failed: {type(error).__name__}: {error}") from error


def refused(server: CountsRefusals, error: Exception) -> ServiceUnavailable:
    """The 503 for a refusal of the batcher's (or the server's): counted, and logged only in the summary."""
    reason, message = REFUSALS[type(error)]
    server.refusals.refused(reason)
    detail = f"{message}: {error}" if str(error) else message
    return ServiceUnavailable(detail, getattr(error, "retry_after_s", 1.0), reason)
