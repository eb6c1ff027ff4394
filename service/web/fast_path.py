"""Simple inference requests answered without Gunicorn's parser, environ builder and response writer.

A served request cost the worker's request thread (gevent's hub; gthread's pool threads share
one GIL) 1.0-1.2 ms of CPU, and that thread is what a closed loop's requests come back through
one by one, and what an answer waits for after its pass (BENCHMARKS.md, "Where the request's time goes").
Gunicorn's share of it (parsing a request the framing has already delimited, a general environ,
a response object, the head and the body in two sends) buys nothing for the common request: an
HTTP/1.1 `POST` to a predict path, without a query or escapes, with a `Content-Length`, kept
alive. For such a request the environ is built here from the fields `RequestFraming` already
split, the same WSGI app answers it (so its access line, metrics, request id, API keys and errors
are the usual ones), and the answer leaves in one send. Every other request, and the last
answers of a worker that stops (they say `Connection: close`), go the usual way.

Not run for these requests: Gunicorn's `pre_request`/`post_request` hooks and its access log
(this service configures neither; service/telemetry/logs.py writes the access log).
"""

from __future__ import annotations

import io
import re
import sys
from http import HTTPStatus
from typing import Any

from gunicorn import SERVER

from service.client_numbers import whole_number
from service.protocols import match_inference
from service.web.workers import IncomingRequest, kept_alive_response

# A path that is its own PATH_INFO: visible ASCII, no query, no percent-escapes; anything else
# is for Gunicorn's parser to judge.
_SIMPLE_TARGET = re.compile(rb"/[!-~]*")
_NOT_SIMPLE = re.compile(rb"[%?#]")


class FastPath:
    """Answers what `IncomingRequest`s it can; a worker sends the bytes and counts the request as served."""

    def __init__(self, wsgi_app: Any):
        self._app = wsgi_app

    def answer(self, incoming: IncomingRequest, server_address: Any, client_address: Any) -> tuple[bytes, bytes] | None:
        """The whole answer's bytes and what followed the request (a pipelined next one), or None.

        `incoming` must be ready; when it is answered here, its bytes are taken.
        """
        framing = incoming.framing
        if framing.request_line is None or framing.field(b"content-length") is None:
            return None
        target = framing.target
        if framing.method != b"POST" or not _SIMPLE_TARGET.fullmatch(target) or _NOT_SIMPLE.search(target):
            return None
        if match_inference(target.decode("ascii")) is None:
            return None
        received = incoming.take()
        length = whole_number(framing.field(b"content-length"))  # checked by the framing already
        body = received[framing.request_end - length : framing.request_end]
        environ = _environ(framing.target.decode("latin-1"), framing.fields, body, server_address, client_address)
        return self._respond(environ), received[framing.request_end :]

    def _respond(self, environ: dict) -> bytes:
        started: list[tuple[str, list]] = []

        def start_response(status: str, headers: list, exc_info=None):
            started[:] = [(status, headers)]

        chunks = self._app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        status, headers = started[0] if started else (f"500 {HTTPStatus(500).phrase}", [])
        return kept_alive_response(status, headers, body)


def _environ(
    path: str, fields: dict[bytes, list[bytes]], body: bytes, server_address: Any, client_address: Any
) -> dict:
    """A WSGI environ as Gunicorn would build it for this request (PEP 3333)."""
    if isinstance(server_address, tuple):
        server_name, server_port = str(server_address[0]), str(server_address[1])
    else:  # a Unix socket
        server_name, server_port = str(server_address), ""
    environ = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "RAW_URI": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_SOFTWARE": SERVER,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if isinstance(client_address, tuple):
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(client_address[0]), str(client_address[1])
    for name, values in fields.items():
        if name == b"content-length" or b"_" in name:
            continue  # the length is the body's; names with "_" are dropped, as Gunicorn does (header_map)
        key = "CONTENT_TYPE" if name == b"content-type" else "HTTP_" + name.decode("latin-1").upper()
        environ[key.replace("-", "_")] = ",".join(value.decode("latin-1") for value in values)
    return environ
