"""Errors that become HTTP answers: a status, a message for the client, optional headers.

Every client mistake is raised as an `ApiError` subclass and answered as
`{"error": "<what was wrong>"}`, so no client mistake can surface as a 500.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from http import HTTPStatus

import orjson

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]  # a WSGI application (PEP 3333)


def error_body(message: str) -> bytes:
    """The JSON body of every error answer."""
    return orjson.dumps({"error": message})


def render(error: ApiError) -> tuple[int, bytes, dict[str, str]]:
    """Every error answer, whichever protocol or layer gives it: status, body and headers.

    Server faults are logged here; refusals (503) and expiries (504) are counted and summarised
    instead (service/telemetry/refusals.py), since under overload there are thousands a second.
    """
    if error.status >= 500 and error.status not in (503, 504):
        log.error("answering %d: %s", error.status, error.message)
    return error.status, error_body(error.message), error.headers


def write_json(start_response: Callable, status: int, body: bytes, headers: dict[str, str]) -> list[bytes]:
    """Answer a WSGI request outside Flask with a JSON `body` (an error's or a result's)."""
    # `headers` may set another Content-Type (binary tensors of the Open Inference Protocol).
    fields = {"Content-Type": "application/json", **headers, "Content-Length": str(len(body))}
    start_response(f"{status} {HTTPStatus(status).phrase}", list(fields.items()))
    return [body]


class ApiError(Exception):
    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    """API keys are on and the request carries none."""

    status = 401

    def __init__(self, message: str):
        super().__init__(message, {"WWW-Authenticate": 'Bearer realm="model-server"'})


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405

    def __init__(self, message: str, allowed: str):
        super().__init__(message, {"Allow": allowed})


class RequestTimeout(ApiError):
    """The client stopped sending the request's body for READ_TIMEOUT_S (the worker's socket timeout)."""

    status = 408


class Conflict(ApiError):
    """The resource is not in a state that allows it (a job's result before it is done)."""

    status = 409


class Gone(ApiError):
    """The resource existed and was lost or deleted for good (a job whose store was emptied)."""

    status = 410


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    """A body in an encoding (or type) the server does not read."""

    status = 415


class UnprocessableContent(ApiError):
    """Well-formed input the model itself refused (for example a value outside what it accepts)."""

    status = 422


class GatewayTimeout(ApiError):
    """The request's deadline passed before it could be run."""

    status = 504


class ServiceUnavailable(ApiError):
    """The worker cannot take the request now; `Retry-After` says when to try again."""

    status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0, reason: str | None = None):
        # Retry-After counts whole seconds; never 0, which would invite an immediate retry.
        super().__init__(message, {"Retry-After": str(max(1, math.ceil(retry_after_s)))})
        self.reason = reason  # the refusal's label in metrics and the refusal summary
