"""The predict routes as plain WSGI in front of Flask: the service's one hot path.

On a CPU machine every request's Python work takes CPU from the forward pass it waits for
(BENCHMARKS.md), and Flask's request machinery alone costs about 85 us a request. So the
three predict routes are matched here with one regular expression and served without
Flask; every other path goes to Flask unchanged. Each request goes through named stages:
decode (on the request's own thread or greenlet), batch and predict (in the batcher's
thread), then encode (back on the request's thread).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import orjson

from service.backends.tensorflow import InputRejected
from service.batching.batcher import BatcherClosed, DeadlineExceeded, DeadlineUnreachable, QueueFull
from service.errors import (
    ApiError,
    BadRequest,
    GatewayTimeout,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UnprocessableContent,
    error_body,
    write_json,
)
from service.operations import metrics
from service.protocols.tfserving_codec import decode_request, encode_response
from service.web.access import BATCH_SIZE_KEY, REFUSED_KEY, ROUTE_KEY

if TYPE_CHECKING:
    from service.app import ModelServer
    from service.settings import Settings

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]

PREDICT_ROUTES = ("/predict", "/v1/models/{name}:predict", "/v1/models/{name}/versions/{version}:predict")
PREDICT_PATH = re.compile(r"/predict|/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,9}))?:predict")


class PredictEndpoint:
    """WSGI middleware: `POST` to a predict path is answered here, anything else by `fallback`."""

    def __init__(self, server: ModelServer, fallback: WsgiApp):
        self._server = server
        self._fallback = fallback

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        match = PREDICT_PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            return self._fallback(environ, start_response)
        environ[ROUTE_KEY] = _route_template(match)
        try:
            status, body, headers = 200, *self._predict(match, environ)
        except ApiError as error:
            if error.status == 500:
                log.error("answering 500: %s", error.message)
            status, body, headers = error.status, error_body(error.message), error.headers
        except Exception as error:
            log.exception("unexpected error")
            status, body, headers = 500, error_body(f"internal error: {type(error).__name__}"), {}
        return write_json(start_response, status, body, headers)

    def _predict(self, match: re.Match, environ: dict) -> tuple[bytes, dict[str, str]]:
        received_at = time.monotonic()
        if environ["REQUEST_METHOD"] != "POST":
            raise MethodNotAllowed(f"{environ['REQUEST_METHOD']} is not allowed here; predict takes POST", "POST")
        server = self._server
        version = match["version"]
        model = server.model_for(match["name"], int(version) if version is not None else None)
        timeout_s = request_timeout_s(server.settings, environ.get("HTTP_X_REQUEST_TIMEOUT_MS"))
        budget_s = admission_budget_s(server.settings, timeout_s)
        with self._refusals(environ):
            if not server.ready:
                raise _NotReady
            # Before the body is read and decoded: a refusal under overload must cost far less than the work.
            server.batcher.check_room(1, budget_s)
        decoded = decode_request(self._read_body(environ), model.signature, server.batcher.max_batch_size)
        spent_s = time.monotonic() - received_at  # reading and decoding the body took some of the time allowed
        with self._refusals(environ):
            completion = server.batcher.submit(
                decoded.inputs,
                decoded.count,
                timeout_s - spent_s if timeout_s is not None else None,
                budget_s - spent_s if budget_s is not None else None,
            )
        try:
            outcome = completion.wait()
        except InputRejected as error:
            raise UnprocessableContent(f"the model rejected this input: {error}") from error
        except DeadlineExceeded as error:
            metrics.rejected_requests.labels("deadline").inc()
            raise GatewayTimeout(f"the request was not run: {error}") from None
        except Exception as error:
            raise ApiError(f"the forward pass failed: {type(error).__name__}: {error}") from error
        environ[BATCH_SIZE_KEY] = outcome.batch_size
        body = orjson.dumps(encode_response(outcome.result, decoded.layout))
        return body, {"X-Batch-Size": str(outcome.batch_size)}

    @contextlib.contextmanager
    def _refusals(self, environ: dict) -> Iterator[None]:
        """Answer the batcher's refusals with 503 and Retry-After; count them, and log them only as a summary."""
        try:
            yield
        except tuple(_REFUSALS) as error:
            environ[REFUSED_KEY] = _REFUSALS[type(error)][0]
            raise refused(self._server, error) from None

    def _read_body(self, environ: dict) -> bytes:
        """The whole body, refused with 413 before it is read when it declares more than MAX_BODY_BYTES.

        408 when the client stops sending it: the workers receive a request whole before the
        app sees it (service/web/workers.py), so this happens only where they fall back to
        Gunicorn's reading, whose socket then times out after READ_TIMEOUT_S without a byte.
        """
        limit = self._server.settings.max_body_bytes
        declared = environ.get("CONTENT_LENGTH") or ""
        if declared:
            if not (declared.isascii() and declared.isdigit()):
                raise BadRequest(f"Content-Length {declared!r} is not a byte count")
            if int(declared) > limit:
                raise PayloadTooLarge(f"the body has {declared} bytes; at most {limit} are accepted (MAX_BODY_BYTES)")
            return _read_input(environ, int(declared))
        body = _read_input(environ, limit + 1)  # chunked: read at most one byte past the limit
        if len(body) > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes (MAX_BODY_BYTES)")
        return body


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


def _read_input(environ: dict, size: int) -> bytes:
    try:
        return environ["wsgi.input"].read(size)
    except TimeoutError:  # the socket's READ_TIMEOUT_S passed without a byte
        raise RequestTimeout(
            "the request's body stopped arriving (READ_TIMEOUT_S); check that Content-Length matches the body sent"
        ) from None


class _NotReady(Exception):
    """The model is not warmed up yet, or the worker is shutting down."""


_REFUSALS: dict[type[Exception], tuple[str, str]] = {  # refusal -> (reason label, message)
    QueueFull: ("queue_full", "this worker's queue is full"),
    DeadlineUnreachable: ("deadline_unreachable", "the deadline cannot be met"),
    BatcherClosed: ("shutting_down", "this worker takes no more requests"),
    _NotReady: ("not_ready", "the model is not ready yet or the worker is shutting down"),
}


def refused(server: ModelServer, error: Exception) -> ServiceUnavailable:
    """The 503 for a refusal of the batcher's (or the server's): counted, and logged only in the summary."""
    reason, message = _REFUSALS[type(error)]
    server.refusals.refused(reason)
    detail = f"{message}: {error}" if str(error) else message
    return ServiceUnavailable(detail, getattr(error, "retry_after_s", 1.0))


def refusal_before_reading(
    server: ModelServer, method: str, target: str, timeout_header: str | None = None
) -> tuple[str, ServiceUnavailable] | None:
    """(route, 503) for a predict request refused by a full queue or an unreachable deadline, else None.

    Judged from its request line and its `X-Request-Timeout-Ms` (`timeout_header`), for the
    workers, which call it before Gunicorn parses the request (service/web/backpressure.py): only
    what the predict route would refuse before reading the body, and only when nothing else
    could answer first (API keys, an unknown model, a malformed timeout).
    """
    match = PREDICT_PATH.fullmatch(target)
    if method != "POST" or match is None or not server.ready or server.settings.api_keys:
        return None
    version = match["version"]
    try:
        server.model_for(match["name"], int(version) if version is not None else None)
        timeout_s = request_timeout_s(server.settings, timeout_header)
        server.batcher.check_room(1, admission_budget_s(server.settings, timeout_s))
    except ApiError:
        return None
    except (QueueFull, DeadlineUnreachable) as error:
        return _route_template(match), refused(server, error)
    return None


def _route_template(match: re.Match) -> str:
    if match["name"] is None:
        return PREDICT_ROUTES[0]
    return PREDICT_ROUTES[1] if match["version"] is None else PREDICT_ROUTES[2]
