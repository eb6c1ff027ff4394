"""What every protocol shares: deadlines from the request, reading the body, and the one table
that turns what went wrong into an answer (status, message, headers).

A protocol module decodes its wire format and encodes its answers; everything between (admission,
the batcher's refusals, the model's rejections, deadlines) is answered the same way whichever
protocol the request came in by.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

from werkzeug.exceptions import HTTPException

from service.backends.base import InputRejected
from service.batching.admission import DeadlineUnreachable
from service.batching.requests import BatcherClosed, DeadlineExceeded, QueueFull
from service.client_numbers import whole_number
from service.errors import (
    ApiError,
    BadRequest,
    GatewayTimeout,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UnprocessableContent,
)
from service.model_server import ModelServer
from service.protocols.compressed import decompressed
from service.settings import Settings
from service.telemetry import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceTarget:
    """An inference request's path, understood: its protocol, route template (for metrics) and the model it names."""

    protocol: str
    route: str
    model_name: str | None  # None: the one model served
    version: int | None  # None: the latest version served (or the label's)
    label: str | None = None  # a version label (MODEL_VERSION_LABELS)


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


def api_error_for(error: BaseException, server: ModelServer | None = None) -> ApiError:
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


def refused(server: ModelServer, error: Exception) -> ServiceUnavailable:
    """The 503 for a refusal of the batcher's (or the server's): counted, and logged only in the summary."""
    reason, message = REFUSALS[type(error)]
    server.refusals.refused(reason)
    detail = f"{message}: {error}" if str(error) else message
    return ServiceUnavailable(detail, getattr(error, "retry_after_s", 1.0), reason)


def request_timeout_s(settings: Settings, header: str | None) -> float | None:
    """The client's `X-Request-Timeout-Ms`, at most REQUEST_TIMEOUT_MS; else that; None for no deadline."""
    server_ms = settings.request_timeout_ms or None
    if header is None:
        return server_ms / 1000 if server_ms else None
    try:
        client_ms = float(header)
    except ValueError:
        client_ms = math.nan
    if not (math.isfinite(client_ms) and client_ms > 0):
        raise BadRequest(f"X-Request-Timeout-Ms {header!r} is not a positive number of milliseconds")
    return min(client_ms, server_ms or client_ms) / 1000


def admission_budget_s(settings: Settings, timeout_s: float | None) -> float | None:
    """The time a request is admitted for: its deadline (`request_timeout_s`), else LATENCY_SLO_MS, else none."""
    return timeout_s if timeout_s is not None else settings.latency_slo_s


def read_body(environ: dict, max_body_bytes: int) -> bytes:
    """The whole body, refused with 413 before it is read when it declares more than `max_body_bytes`;
    decompressed when its `Content-Encoding` says it is (service/protocols/compressed.py), to at most as much.

    408 when the client stops sending it: the workers receive a request whole before the
    app sees it (service/web/workers.py), so this happens only where they fall back to
    Gunicorn's reading, whose socket then times out after READ_TIMEOUT_S without a byte.
    """
    sent = _read_sent_body(environ, max_body_bytes)
    return decompressed(sent, environ.get("HTTP_CONTENT_ENCODING"), max_body_bytes)


def _read_sent_body(environ: dict, max_body_bytes: int) -> bytes:
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest(f"Content-Length {declared[:40]!r} is not a byte count")
        length = whole_number(declared, max_body_bytes)
        if length is None:
            raise PayloadTooLarge(
                f"the body has {declared[:40]} bytes; at most {max_body_bytes} are accepted (MAX_BODY_BYTES)"
            )
        return _read_input(environ, length)
    body = _read_input(environ, max_body_bytes + 1)  # chunked: read at most one byte past the limit
    if len(body) > max_body_bytes:
        raise PayloadTooLarge(f"the body exceeds {max_body_bytes} bytes (MAX_BODY_BYTES)")
    return body


def _read_input(environ: dict, size: int) -> bytes:
    try:
        return environ["wsgi.input"].read(size)
    except TimeoutError:  # the socket's READ_TIMEOUT_S passed without a byte
        raise RequestTimeout(
            "the request's body stopped arriving (READ_TIMEOUT_S); check that Content-Length matches the body sent"
        ) from None


YIELD_S = 0.0005  # the shortest turn given to others: any positive time (see TakeTurns)
OTHERS_SHARE = 3  # between slices, the others get this many times the time the slice took (BENCHMARKS.md)


class TakeTurns:
    """Between the slices of a large body: let the worker's other requests run OTHERS_SHARE times as long.

    Parsing holds the GIL. While a 40 MB body was parsed in 1 MB slices with 0.5 ms yields, the
    single requests served beside it had 2.8x their p99; in 256 KB slices with as long a turn for
    the others, 2.2-2.5x; with three times as long, 1.5x. A large body takes that much longer to
    parse, which is small beside the passes it then needs. Always, even with no other request in
    flight: turns given only while the batcher had instances in flight, or while the worker had
    other requests, left 2.3-2.8x instead of 1.5-1.6x (a request arriving meanwhile waits a slice).
    A large request alone is parsed that much slower: 230 against about 340 instances/s end to end
    for a request of 1,000 heavy-model instances (BENCHMARKS.md).
    Not sleep(0): gevent may switch straight back to a greenlet that sleeps 0 before its loop
    polls for I/O; any positive time waits for the next turn of the loop.
    """

    def __init__(self):
        self._since = time.perf_counter()

    def __call__(self) -> None:
        time.sleep(max(YIELD_S, OTHERS_SHARE * (time.perf_counter() - self._since)))
        self._since = time.perf_counter()
