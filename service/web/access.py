"""The outermost WSGI layer: a request id, the request metrics and one access-log event per request.

Refusals (503 under overload) are counted like any request but get no access line: a worker
may refuse thousands a second, and refusals.py logs them as a summary instead.

Every answer carries `X-Request-ID`: the client's own when it sent a usable one, else a new
one, so a client's report can be matched with the server's log line. Routes are labelled by
their template (`/v1/models/{name}:predict`), never by the raw path, and unknown methods
count as `other`, so a client cannot create metric series at will.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable

from service.errors import WsgiApp
from service.pipeline.inference import BATCH_SIZE_KEY, MODEL_KEY, PROTOCOL_KEY, REFUSED_KEY, ROUTE_KEY
from service.telemetry import metrics
from service.telemetry.logs import request_id_var

log = logging.getLogger("model_server.access")


UNMATCHED_ROUTE = "unmatched"
OTHER_PROTOCOL = "http"  # the service's own routes (health, metrics, jobs, docs) and unmatched paths
LOGGED_PATH_CHARS = 256  # a hostile path must not make a line long enough to interleave with others
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others count as "other"

_USABLE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII, at most 128 characters
_FLASK_PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def route_template(flask_rule: str) -> str:
    """A Flask rule in OpenAPI's notation: `/v1/models/<model_name:name>` -> `/v1/models/{name}`."""
    return _FLASK_PARAMETER.sub(r"{\1}", flask_rule)


class AccessLayer:
    """WSGI middleware around the whole app; `app` must set ROUTE_KEY on the requests it routes."""

    def __init__(self, app: WsgiApp):
        self._app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.monotonic()
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        token = request_id_var.set(request_id)
        status_code = 500

        def start_with_request_id(status: str, headers: list, exc_info=None):
            nonlocal status_code
            status_code = int(status[:3])
            return start_response(status, [*headers, ("X-Request-ID", request_id)], exc_info)

        try:
            return self._app(environ, start_with_request_id)
        finally:
            self._record(environ, request_id, status_code, time.monotonic() - started)
            request_id_var.reset(token)

    @staticmethod
    def _record(environ: dict, request_id: str, status_code: int, duration_s: float) -> None:
        route = environ.get(ROUTE_KEY, UNMATCHED_ROUTE)
        method = environ.get("REQUEST_METHOD", "")
        protocol = environ.get(PROTOCOL_KEY, OTHER_PROTOCOL)
        count_request(protocol, route, method, status_code, duration_s)
        if log.isEnabledFor(logging.INFO) and REFUSED_KEY not in environ:
            batch_size = environ.get(BATCH_SIZE_KEY)
            model, version = environ.get(MODEL_KEY, (None, None))
            path = environ.get("PATH_INFO", "")
            if len(path) > LOGGED_PATH_CHARS:
                path = path[:LOGGED_PATH_CHARS] + "..."
            log.info(
                "%s %s %d %.1f ms%s",
                method,
                path,
                status_code,
                1000 * duration_s,
                f" batch {batch_size}" if batch_size is not None else "",
                extra={
                    "event": "access",
                    "request_id": request_id,
                    "method": method,
                    "path": path,
                    "protocol": protocol,
                    "route": route,
                    "status": status_code,
                    "duration_ms": round(1000 * duration_s, 3),
                    "batch_size": batch_size,
                    "model": model,
                    "model_version": version,
                    "remote_addr": environ.get("REMOTE_ADDR"),
                },
            )


def count_request(protocol: str, route: str, method: str, status_code: int, duration_s: float) -> None:
    """The request metrics of one answer (also of one refused before it reached the app: web/backpressure.py)."""
    method = method if method in KNOWN_METHODS else "other"
    metrics.labelled(metrics.http_requests, protocol, route, method, str(status_code)).inc()
    metrics.labelled(metrics.http_request_duration, protocol, route).observe(duration_s)


def request_id_for(supplied: str) -> str:
    """The client's `X-Request-ID` if usable, else a new one."""
    return supplied if _USABLE_REQUEST_ID.fullmatch(supplied) else os.urandom(16).hex()  # uuid4's bits, 6x cheaper
