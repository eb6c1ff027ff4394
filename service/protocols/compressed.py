"""Request bodies sent compressed (`Content-Encoding: gzip` or `deflate`), decompressed within MAX_BODY_BYTES.

Triton's HTTP server takes both, and clients of large tensors use them. The body is inflated a
slice at a time and never past `max_bytes` of output: a 10 GB zip bomb costs at most that much
memory and the time to inflate it, then 413. `deflate` is the zlib format (RFC 9110), but raw
deflate streams, which some clients send under that name, are read too.
"""

from __future__ import annotations

import zlib

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

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
