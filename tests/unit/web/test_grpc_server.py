"""A gRPC call served as a WSGI request: the answer's HTTP status becomes the call's gRPC status."""

from __future__ import annotations

import grpc
import orjson
import pytest

from service.errors import ServiceUnavailable, render, write_json
from service.pipeline.inference import REFUSED_KEY
from service.web.grpc_server import serve_call


class Aborted(Exception):
    pass


class FakeContext:
    """What serve_call uses of a grpc.ServicerContext; `abort` raises, as gRPC's does."""

    def __init__(self, remaining_s: float | None = None):
        self.remaining_s = remaining_s
        self.code = self.details = None
        self.trailing = ()

    def peer(self):
        return "ipv4:127.0.0.1:5000"

    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return self.remaining_s

    def set_trailing_metadata(self, trailing):
        self.trailing = trailing

    def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted


def refusing(reason: str, message: str):
    def app(environ, start_response):
        environ[REFUSED_KEY] = reason
        status, body, headers = render(ServiceUnavailable(message, 2.0, reason))
        return write_json(start_response, status, body, headers)

    return app


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("deadline_unreachable", grpc.StatusCode.DEADLINE_EXCEEDED),  # retrying elsewhere cannot help it
        ("queue_full", grpc.StatusCode.UNAVAILABLE),  # another worker or a later try may have room
        ("not_ready", grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_a_refusal_gets_the_code_grpc_clients_expect_with_when_to_retry(reason, code):
    context = FakeContext(remaining_s=0.001)
    with pytest.raises(Aborted):
        serve_call(refusing(reason, f"refused: {reason}"), "/x/Predict", b"", context, "tfserving_grpc")
    assert context.code == code and context.details == f"refused: {reason}"
    assert ("grpc-retry-pushback-ms", "2000") in context.trailing


def test_an_answer_is_the_calls_message_and_the_deadline_reaches_the_app():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [("X-Request-ID", "r-1")])
        return [orjson.dumps({"ok": True})]

    answer = serve_call(app, "/x/Predict", b"message", FakeContext(remaining_s=0.25), "tfserving_grpc")
    assert answer == b'{"ok":true}' and seen["HTTP_X_REQUEST_TIMEOUT_MS"] == "250.0"
    assert seen["wsgi.input"].read() == b"message" and seen["CONTENT_LENGTH"] == "7"
