"""The fast path: simple predict requests answered by the same app without Gunicorn's parser, others left to it."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from service.app import create_app
from service.web.fast_path import FastPath
from service.web.framing import RequestFraming
from service.web.workers import IncomingRequest

NEXT_REQUEST = b"GET /healthz HTTP/1.1\r\n\r\n"
SERVER, CLIENT = ("127.0.0.1", 8000), ("127.0.0.1", 50000)
BODY = b'{"instances": [[1.0, 2.0, 3.0]]}'


def arrived(head: bytes, body: bytes = BODY) -> IncomingRequest:
    """A request received whole, with the start of a pipelined next one behind it."""
    incoming = IncomingRequest(RequestFraming(8192, 4096, head + body + NEXT_REQUEST), 30.0, 30.0, time.monotonic())
    assert incoming.ready
    return incoming


def predict_head(target: bytes = b"/v1/models/fake:predict", fields: bytes = b"", body: bytes = BODY) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (target, fields, len(body))


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body)
    return int(status_line.split()[1]), headers, body


def test_a_simple_predict_request_gets_the_routes_own_answer_in_one_piece(app):
    raw, rest = FastPath(app).answer(arrived(predict_head(fields=b"X-Request-ID: fast-1\r\n")), SERVER, CLIENT)
    status, headers, body = parse_answer(raw)
    routed = app.test_client().post("/v1/models/fake:predict", data=BODY, content_type="application/json")
    assert status == 200 and json.loads(body) == routed.get_json()
    assert headers["X-Request-ID"] == "fast-1" and headers["Connection"] == "keep-alive"
    assert headers["Content-Type"] == "application/json" and headers["X-Batch-Size"] == "1"
    assert rest == NEXT_REQUEST, "a pipelined request is kept for the parser"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/models/fake:predict HTTP/1.1\r\nHost: x\r\n\r\n",
        predict_head(b"/v1/models/fake:predict?debug=1"),
        predict_head(b"/v1/models/f%61ke:predict"),
        predict_head(b"/v1/models/f\x01ke:predict"),
        predict_head(b"/v1/models/fake/metadata"),
        predict_head(fields=b"Connection: close\r\n"),
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /predict HTTP/1.0\r\nHost: x\r\nContent-Length: 32\r\n\r\n",
    ],
    ids=["GET", "query", "escapes", "control byte", "not predict", "connection close", "chunked", "HTTP/1.0"],
)
def test_anything_else_is_left_to_gunicorn_untouched(app, head):
    body = b"20\r\n" + BODY + b"\r\n0\r\n\r\n" if b"chunked" in head else BODY
    incoming = arrived(head, body)
    assert FastPath(app).answer(incoming, SERVER, CLIENT) is None
    assert incoming.take() == head + body + NEXT_REQUEST, "its bytes are left for the parser"


def test_client_mistakes_get_the_same_4xx_json_answers(app):
    fast = FastPath(app)
    for fields, body, status, says in [
        (b"", b'{"instances": [[1.0, 2.0]]}', 400, "shape"),
        (b"", b"{not json", 400, "JSON"),
        (b"X-Request-Timeout-Ms: soon\r\n", BODY, 400, "X-Request-Timeout-Ms"),
        (b"", BODY, 404, "not served"),
    ]:
        target = b"/v1/models/other:predict" if status == 404 else b"/v1/models/fake:predict"
        raw, _ = fast.answer(arrived(predict_head(target, fields, body), body), SERVER, CLIENT)
        answered, headers, answer = parse_answer(raw)
        assert answered == status and says in json.loads(answer)["error"], (status, answer)
        assert headers["Content-Type"] == "application/json"


def test_api_keys_are_checked_from_the_requests_own_headers(settings, fake_model):
    keyed = create_app(dataclasses.replace(settings, api_keys="secret"), fake_model)
    try:
        fast = FastPath(keyed)
        unauthorized, _ = fast.answer(arrived(predict_head()), SERVER, CLIENT)
        status, headers, _ = parse_answer(unauthorized)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        authorized, _ = fast.answer(arrived(predict_head(fields=b"Authorization: Bearer secret\r\n")), SERVER, CLIENT)
        assert parse_answer(authorized)[0] == 200
    finally:
        keyed.extensions["model_server"].close()
