"""RequestFraming says a request has arrived exactly when Gunicorn's parser has all it needs."""

from __future__ import annotations

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from service.web.framing import CHUNKED_READ_AHEAD_BYTES, RequestFraming, max_head_bytes
from service.web.workers import ReadPolicy

MAX_HEAD_BYTES = max_head_bytes(4094, 100, 8190)
MAX_BODY_BYTES = 1000
BODY = b'{"instances": [[1.0, 2.0, 3.0]]}'

COMPLETE_REQUESTS = {
    "get": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "no headers": b"GET / HTTP/1.1\r\n\r\n",
    "leading empty line": b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "content-length": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
    "http/1.0 body": b"POST /predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
    "chunked": b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\n" + BODY[:5] + b"\r\n" + b"%x;ext=1\r\n" % (len(BODY) - 5) + BODY[5:] + b"\r\n0\r\n\r\n",
    "chunked with trailers": b"POST /predict HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"
    b"%X\r\n%s\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n" % (len(BODY), BODY),
    "expect 100-continue": b"POST /predict HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n%s"
    % (len(BODY), BODY),
}


def framing(received: bytes = b"") -> RequestFraming:
    return RequestFraming(MAX_HEAD_BYTES, MAX_BODY_BYTES, received)


def body_read_by_gunicorn(received: bytes) -> bytes:
    """What Gunicorn's parser makes of exactly these bytes: it raises if it needs more."""
    request = next(RequestParser(Config(), iter([received]), ("127.0.0.1", 1)))
    return request.body.read()


@pytest.mark.parametrize("name", COMPLETE_REQUESTS)
def test_ready_exactly_when_the_last_byte_arrives(name):
    request = COMPLETE_REQUESTS[name]
    arriving = framing()
    for index in range(len(request)):
        assert not arriving.ready, f"ready {len(request) - index} bytes early"
        arriving.receive(request[index : index + 1])
    assert arriving.ready
    assert arriving.take() == request
    body_read_by_gunicorn(request)  # and Gunicorn's parser needs nothing more


@pytest.mark.parametrize("name", COMPLETE_REQUESTS)
def test_ready_when_received_in_one_piece(name):
    assert framing(COMPLETE_REQUESTS[name]).ready


def test_gunicorn_reads_the_whole_body_from_what_arrived():
    assert body_read_by_gunicorn(COMPLETE_REQUESTS["chunked"]) == BODY
    assert body_read_by_gunicorn(COMPLETE_REQUESTS["content-length"]) == BODY


def test_a_pipelined_request_stays_in_the_bytes_handed_over():
    request = COMPLETE_REQUESTS["content-length"]
    arriving = framing(request + b"GET /next HT")
    assert arriving.ready
    assert arriving.take() == request + b"GET /next HT"


def test_a_lying_content_length_is_never_ready():
    arriving = framing(b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + BODY)
    assert arriving.head_complete and not arriving.ready


def test_started_and_head_complete_follow_the_bytes():
    arriving = framing()
    assert not arriving.started
    arriving.receive(b"POST /predict HTTP/1.1\r\nContent-Le")
    assert arriving.started and not arriving.head_complete
    arriving.receive(b"ngth: 5\r\n\r\n")
    assert arriving.head_complete and not arriving.ready


def test_the_head_end_is_found_across_pieces():
    arriving = framing(b"GET / HTTP/1.1\r\nHost: x\r")
    arriving.receive(b"\n\r")
    assert not arriving.ready
    arriving.receive(b"\n")
    assert arriving.ready


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),  # refused (413) unread
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nExpect: something-else\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nNo-Colon\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n folded\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",  # int() would raise: a worker ended
    ],
    ids=[
        "empty body",
        "too large",
        "conflicting lengths",
        "signed length",
        "length and chunked",
        "unknown coding",
        "unknown expectation",
        "no colon",
        "obsolete folding",
        "space before colon",
        "5,000 digits",
    ],
)
def test_ready_at_the_end_of_a_head_the_parser_answers_without_a_body(head):
    assert framing(head).ready


@pytest.mark.parametrize(
    "received",
    [b"GET / HTTP/1.1\nHost: x", b"GET / HTTP/1.1\r\nHost: x\n", b"\n"],
    ids=["request line", "header", "first byte"],
)
def test_a_bare_line_feed_in_the_head_is_handed_over_at_once(received):
    assert framing(received).ready


def test_a_bare_line_feed_in_the_body_is_only_data():
    arriving = framing(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\na\nb")
    assert not arriving.ready
    arriving.receive(b"c")
    assert arriving.ready


def test_a_head_longer_than_the_parser_buffers_is_handed_over():
    arriving = framing(b"GET / HTTP/1.1\r\n")
    while not arriving.ready:
        arriving.receive(b"X-Filler: " + b"a" * 8000 + b"\r\n")
    assert MAX_HEAD_BYTES < arriving.received_bytes <= MAX_HEAD_BYTES + 8012


@pytest.mark.parametrize("size_line", [b"zz\r\n", b"0x5\r\n", b"-5\r\n", b" \r\n"])
def test_a_malformed_chunk_size_is_handed_over(size_line):
    assert framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line).ready


def test_chunk_data_must_end_with_crlf_or_is_handed_over():
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert not framing(head + b"3\r\nabc\r").ready
    assert framing(head + b"3\r\nabcXY").ready


def test_a_chunked_body_past_the_limit_is_handed_over_once_the_app_can_refuse_it():
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    enough = MAX_BODY_BYTES + CHUNKED_READ_AHEAD_BYTES
    arriving = framing(head + b"%x\r\n" % (2 * enough))
    arriving.receive(b"a" * enough)
    assert not arriving.ready
    arriving.receive(b"a")
    assert arriving.ready


def test_expect_continue_is_asked_only_for_an_http11_body():
    assert framing(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n").expects_continue
    assert not framing(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").expects_continue
    assert not framing(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").expects_continue
    no_body = framing(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
    assert no_body.ready and not no_body.expects_continue


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ((4094, 100, 8190), 100 * 8192 + 4 + 4094),
        ((0, 0, 0), 32768 * 8192 + 4 + 1024 * 1024),
        ((20000, 10, 100), 10 * 102 + 4 + 8190),
    ],
)
def test_max_head_bytes_follows_gunicorns_limits(limits, expected):
    assert max_head_bytes(*limits) == expected


def test_a_kept_alive_request_whose_end_is_known_gives_its_request_line_end_id_and_timeout():
    single = COMPLETE_REQUESTS["content-length"].replace(
        b"Host: x\r\n", b"Host: x\r\nX-Request-ID: abc\r\nx-request-timeout-ms: 250\r\n"
    )
    arrived = framing(single + COMPLETE_REQUESTS["get"])
    assert arrived.ready and arrived.request_line == b"POST /predict HTTP/1.1" and arrived.request_id == b"abc"
    assert arrived.request_timeout_ms == b"250"
    assert arrived.take()[arrived.request_end :] == COMPLETE_REQUESTS["get"], "the pipelined request starts there"
    no_body = framing(COMPLETE_REQUESTS["get"])
    assert no_body.request_end == len(COMPLETE_REQUESTS["get"]) and no_body.request_id == b""
    assert no_body.request_timeout_ms is None


@pytest.mark.parametrize("name", ["chunked", "http/1.0 body", "connection close"])
def test_a_request_that_ends_its_connection_or_is_chunked_is_left_to_the_parser(name):
    received = COMPLETE_REQUESTS.get(name) or COMPLETE_REQUESTS["content-length"].replace(
        b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"
    )
    arrived = framing(received)
    assert arrived.ready and arrived.request_line is None and arrived.request_end is None


@pytest.mark.parametrize(
    ("request_line", "waits_for_body"),
    [
        (b"POST /v1/models/m/jobs HTTP/1.1", True),
        (b"POST /v1/models/m/versions/2/jobs?priority=3 HTTP/1.1", True),
        (b"POST /v1/models/m:predict HTTP/1.1", False),
        (b"GET /v1/models/m/jobs HTTP/1.1", False),
        (b"POST /v1/models/m/jobs/x HTTP/1.1", False),
    ],
)
def test_a_job_submission_may_carry_a_larger_body_than_predict(request_line, waits_for_body):
    large = MAX_BODY_BYTES + 10
    head = request_line + b"\r\nContent-Length: %d\r\n\r\n" % large
    policy = ReadPolicy(30.0, 5.0, MAX_HEAD_BYTES, MAX_BODY_BYTES, max_job_body_bytes=4 * MAX_BODY_BYTES)
    incoming = RequestFraming(MAX_HEAD_BYTES, MAX_BODY_BYTES, head, policy.body_limit)
    assert incoming.ready is not waits_for_body, "above MAX_BODY_BYTES: handed over at once, to be refused unread"
    if waits_for_body:
        incoming.receive(b"x" * large)
        assert incoming.ready


def test_a_defect_of_the_framing_hands_the_bytes_to_the_parser_instead_of_raising(monkeypatch, caplog):
    incoming = framing()

    def broken(head):
        raise RuntimeError("a defect")

    monkeypatch.setattr(incoming, "_framing_of", broken)
    incoming.receive(COMPLETE_REQUESTS["content-length"])
    assert incoming.ready and incoming.request_line is None  # ready for the parser, and no fast path past it
    assert "framing a request failed" in caplog.text
