"""Where an HTTP/1.1 request ends in the bytes received so far: to know when it has arrived.

The workers (service/web/gevent_worker.py, service/web/gthread_worker.py) read each request whole
before a thread or a served-request slot is given to it, so a client that stalls holds only
its connection. `RequestFraming` tells them when to stop reading. It decides timing only:
Gunicorn's parser still parses every byte, so a disagreement between the two can delay a
request, never split one differently. Whatever this class does not judge (a malformed head,
an unknown transfer coding, a head or body beyond the limits) makes the request "ready" at
once, so the parser answers it (400, 413, 431, 501) instead of the client waiting.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from service.client_numbers import whole_number

log = logging.getLogger(__name__)

CRLF = b"\r\n"
HEAD_END = b"\r\n\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
# A chunk-size line longer than this is not a chunk size; the parser will refuse it.
MAX_CHUNK_LINE_BYTES = 8192
# A chunked body past MAX_BODY_BYTES is handed over once this much more has arrived: the app
# reads MAX_BODY_BYTES + 1 bytes to refuse it (413), and Gunicorn's reader asks for up to 1 KiB more.
CHUNKED_READ_AHEAD_BYTES = 64 * 1024


def max_head_bytes(limit_request_line: int, limit_request_fields: int, limit_request_field_size: int) -> int:
    """The most bytes Gunicorn's parser buffers for a head before refusing it (431), from its `limit_*` settings.

    Mirrors gunicorn.http.message: 0 or less means its built-in maximum for each limit.
    """
    line = 1024 * 1024 if limit_request_line == 0 else min(limit_request_line, 8190)
    if limit_request_line < 0:
        line = 8190
    fields = limit_request_fields if 0 < limit_request_fields <= 32768 else 32768
    field_size = limit_request_field_size if limit_request_field_size > 0 else 8190
    return fields * (field_size + 2) + 4 + line


class RequestFraming:
    """The bytes of one HTTP/1.1 request as they arrive; `ready` once it is all here.

    A request is ready when its head (up to the blank line) and its body (`Content-Length`
    bytes, or chunks up to the last one and its trailers) have arrived, or as soon as the
    bytes are something the parser should answer without waiting for more: a bare LF in
    the head, a head longer than `max_head_bytes`, a `Content-Length` above `max_body_bytes`
    (answered 413 unread), a decoded chunked body past `max_body_bytes`, conflicting or
    unparsable framing headers, or an `Expect` other than `100-continue`. Bytes after the
    request (a pipelined next one) are kept: `take()` returns everything received.
    """

    def __init__(
        self,
        max_head_bytes: int,
        max_body_bytes: int,
        received: bytes = b"",
        body_limit: Callable[[bytes], int] | None = None,
    ):
        """`body_limit(request_line)`, when given, is the body limit of that request instead of `max_body_bytes`."""
        self._max_head_bytes = max_head_bytes
        self._max_body_bytes = max_body_bytes
        self._body_limit_of = body_limit
        self._received = bytearray()
        self._head_end: int | None = None  # index just past the blank line ending the head
        self._scanned = 0  # bytes of the head already searched for its end and for bare LFs
        self._body: _LengthBody | _ChunkedBody | None = None
        self.ready = False
        # Once the head is here, for a well-formed HTTP/1.1 request that keeps its connection open and
        # whose end is known without decoding (no body, or Content-Length): its request line, and the
        # index just past it in what `take()` returns. None otherwise (then only the parser can judge it).
        self.request_line: bytes | None = None
        self.request_end: int | None = None
        self.fields: dict[bytes, list[bytes]] | None = None  # its header fields (lowercase names), with the two above
        self.expects_continue = False  # the head asked for `100 Continue` before the body is sent
        if received:
            self.receive(received)

    @property
    def method(self) -> bytes:
        """The request line's method (with `request_line`)."""
        return self.request_line.partition(b" ")[0]

    @property
    def target(self) -> bytes:
        """The request line's target, as sent (with `request_line`)."""
        return self.request_line.partition(b" ")[2].rpartition(b" ")[0]

    @property
    def request_id(self) -> bytes:
        """Its X-Request-ID, or empty (with `request_line`)."""
        return self.field(b"x-request-id") or b""

    @property
    def request_timeout_ms(self) -> bytes | None:
        """Its X-Request-Timeout-Ms, if any (with `request_line`)."""
        return self.field(b"x-request-timeout-ms")

    def field(self, name: bytes) -> bytes | None:
        """The first value of header field `name` (lowercase), once `fields` is known."""
        values = self.fields.get(name) if self.fields is not None else None
        return values[0] if values else None

    @property
    def started(self) -> bool:
        """Whether any byte of the request has arrived."""
        return bool(self._received)

    @property
    def head_complete(self) -> bool:
        return self._head_end is not None

    @property
    def received_bytes(self) -> int:
        return len(self._received)

    def receive(self, data: bytes) -> None:
        """Add bytes from the connection; `ready` may become True (it never goes back).

        Never raises: bytes this class fails to judge, through a defect of its own, are handed to the
        parser at once (which answers them) rather than ending the worker that reads them.
        """
        self._received += data
        if self.ready:
            return
        try:
            if self._head_end is None:
                self._scan_head()
            if self._head_end is not None and not self.ready:
                self.ready = self._body.receive(self._received, self._head_end)
        except Exception:
            log.exception("framing a request failed; Gunicorn's parser judges its %d bytes", len(self._received))
            self.ready = True
            self.request_line = self.request_end = self.fields = None  # no shortcut past the parser

    def take(self) -> bytes:
        """Everything received, for the parser; the framing is finished with."""
        received, self._received = bytes(self._received), bytearray()
        return received

    def _scan_head(self) -> None:
        start = max(0, self._scanned - (len(HEAD_END) - 1))
        end = self._received.find(HEAD_END, start)
        head_stop = len(self._received) if end < 0 else end + len(CRLF)
        if _BARE_LF.search(self._received, max(self._scanned, 0), head_stop):
            self.ready = True  # the parser refuses a bare LF at once
            return
        self._scanned = len(self._received)
        if end < 0:
            self.ready = len(self._received) > self._max_head_bytes  # the parser answers 431
            return
        self._head_end = end + len(HEAD_END)
        self._body = self._framing_of(bytes(self._received[:end]))
        if self.request_end is not None:
            self.request_end += self._head_end
        if self._body is None:
            self.ready = True

    def _framing_of(self, head: bytes) -> _LengthBody | _ChunkedBody | None:
        """How the body is delimited, or None when the request is ready at the head's end."""
        lines = head.split(CRLF)
        if lines and not lines[0]:
            lines = lines[1:]  # RFC 9112 2.2: one empty line may come before the request line
        if not lines:
            return None
        http11 = lines[0].endswith(b" HTTP/1.1")
        fields: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                return None  # not a field line the parser accepts: let it say so
            fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
        lengths, codings, expect = (
            fields.get(b"content-length"),
            fields.get(b"transfer-encoding"),
            fields.get(b"expect"),
        )
        if http11 and expect is not None and [value.lower() for value in expect] != [b"100-continue"]:
            return None  # 417 from the parser
        connection = b",".join(fields.get(b"connection", ())).lower()
        keeps_open = http11 and b"close" not in connection and b"upgrade" not in connection
        if codings is not None:
            if lengths is not None:
                return None
            tokens = [token.strip().lower() for value in codings for token in value.split(b",")]
            if tokens != [b"chunked"]:
                return None  # 501 (or 400) from the parser
            body = _ChunkedBody(self._body_limit(lines[0]))
        elif lengths is not None:
            length = whole_number(lengths[0]) if len(set(lengths)) == 1 else None
            if length is None:
                return None  # not one byte count this server could hold: the parser refuses it
            if length > self._body_limit(lines[0]):
                return None  # refused (413) before the body is read
            self._known_end(lines[0], length, keeps_open, fields)
            if length == 0:
                return None  # nothing to wait for
            body = _LengthBody(length)
        else:
            self._known_end(lines[0], 0, keeps_open, fields)
            return None  # a request without Content-Length or Transfer-Encoding has no body
        self.expects_continue = expect is not None and http11
        return body

    def _body_limit(self, request_line: bytes) -> int:
        return self._max_body_bytes if self._body_limit_of is None else self._body_limit_of(request_line)

    def _known_end(self, request_line: bytes, body_length: int, keeps_open: bool, fields: dict) -> None:
        if keeps_open:
            self.request_line = request_line
            self.request_end = body_length  # the head's length is added once it is known
            self.fields = fields


class _LengthBody:
    def __init__(self, length: int):
        self._length = length

    def receive(self, received: bytearray, body_start: int) -> bool:
        return len(received) - body_start >= self._length


class _ChunkedBody:
    """RFC 9112 7.1 chunked coding, followed only far enough to see where it ends."""

    def __init__(self, max_body_bytes: int):
        self._enough_data_bytes = max_body_bytes + CHUNKED_READ_AHEAD_BYTES
        self._offset: int | None = None  # the next byte of the buffer to look at
        self._data_left = 0  # bytes of the current chunk's data not yet received
        self._crlf_due = False  # the CRLF that ends a chunk's data
        self._in_trailers = False
        self._data_received = 0

    def receive(self, received: bytearray, body_start: int) -> bool:
        if self._offset is None:
            self._offset = body_start
        while True:
            if self._data_left:
                step = min(self._data_left, len(received) - self._offset)
                self._offset += step
                self._data_left -= step
                self._data_received += step
                if self._data_received > self._enough_data_bytes:
                    return True  # enough for the app to refuse it (413) without touching the socket
                if self._data_left:
                    return False
                self._crlf_due = True
            if self._crlf_due:
                if len(received) - self._offset < len(CRLF):
                    return False
                if received[self._offset : self._offset + len(CRLF)] != CRLF:
                    return True  # the parser refuses it
                self._offset += len(CRLF)
                self._crlf_due = False
            line_end = received.find(CRLF, self._offset)
            if line_end < 0:
                return len(received) - self._offset > MAX_CHUNK_LINE_BYTES
            line = bytes(received[self._offset : line_end])
            self._offset = line_end + len(CRLF)
            if self._in_trailers:
                if not line:
                    return True
                continue
            size = line.split(b";", 1)[0].rstrip(b" \t")
            if not _HEX.fullmatch(size):
                return True  # the parser refuses it
            self._data_left = int(size, 16)
            if self._data_left == 0:
                self._in_trailers = True
