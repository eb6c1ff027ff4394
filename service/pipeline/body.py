"""A request's body, read whole: bounded by MAX_BODY_BYTES as sent and once decompressed, and parsed in turns.

Bodies may come compressed (`Content-Encoding: gzip` or `deflate`), as Triton's HTTP server takes
them. The body is inflated a slice at a time and never past `max_bytes` of output: a 10 GB zip
bomb costs at most that much memory and the time to inflate it, then 413. `deflate` is the zlib
format (RFC 9110), but raw deflate streams, which some clients send under that name, are read too.
A large body is parsed in slices, with turns for the worker's other requests between them (`TakeTurns`).
"""

from __future__ import annotations

import time
import zlib

from service.client_numbers import whole_number
from service.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

SLICE_BYTES = 1 << 20  # output inflated at a time
GZIP_WBITS, ZLIB_WBITS, RAW_DEFLATE_WBITS = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS
CODINGS = {"gzip": (GZIP_WBITS,), "x-gzip": (GZIP_WBITS,), "deflate": (ZLIB_WBITS, RAW_DEFLATE_WBITS)}


def decompressed(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """`body` as sent before its `Content-Encoding` (none or `identity`: as it is).

    415 for a coding other than gzip or deflate (or more than one); 400 for a body that is not
    what its coding says; 413 once its inflated size passes `max_bytes`.
    """
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in CODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {content_encoding[:40]!r} is not one this server decodes: send gzip, deflate or none"
        )
    *_, last = CODINGS[coding]
    for wbits in CODINGS[coding]:
        try:
            return _inflate(body, wbits, max_bytes, coding)
        except zlib.error as error:
            if wbits == last:
                raise BadRequest(f"the body is not valid {coding} data (Content-Encoding): {error}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _inflate(body: bytes, wbits: int, max_bytes: int, coding: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    slices, size, pending = [], 0, body
    while not inflater.eof:
        limit = min(SLICE_BYTES, max_bytes - size + 1)  # one byte past the maximum tells that it is passed
        piece = inflater.decompress(pending, limit)
        pending = inflater.unconsumed_tail
        size += len(piece)
        if size > max_bytes:
            raise PayloadTooLarge(
                f"the body inflates past {max_bytes} bytes (MAX_BODY_BYTES); send less, or send it uncompressed"
            )
        slices.append(piece)
        if not pending and len(piece) < limit:
            break  # every byte read, and nothing held back
    if not inflater.eof:
        raise zlib.error(f"the {coding} stream ends early")
    if inflater.unused_data:
        raise zlib.error("bytes follow the end of the compressed stream")
    return b"".join(slices)


def read_body(environ: dict, max_body_bytes: int) -> bytes:
    """The whole body, refused with 413 before it is read when it declares more than `max_body_bytes`;
    decompressed when its `Content-Encoding` says it is (`decompressed`), to at most as much.

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
