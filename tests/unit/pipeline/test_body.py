"""Compressed request bodies: gzip and deflate inflated within MAX_BODY_BYTES; a zip bomb refused early."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib

import pytest

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.pipeline.body import decompressed

BODY = b'{"instances": [[1.0, 2.0, 3.0]]}' * 1000


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZip", gzip.compress),
        ("deflate", zlib.compress),  # the zlib format, as RFC 9110 says
        ("deflate", raw_deflate),  # what some clients send under that name
        ("identity", lambda data: data),
        (None, lambda data: data),
    ],
)
def test_every_coding_taken_gives_back_the_body_sent(coding, compress):
    assert decompressed(compress(BODY), coding, len(BODY)) == BODY


@pytest.mark.parametrize(
    ("body", "coding", "error", "message"),
    [
        (BODY, "br", UnsupportedMediaType, "Content-Encoding 'br' is not one this server decodes"),
        (gzip.compress(BODY), "gzip, deflate", UnsupportedMediaType, "send gzip, deflate or none"),
        (b"not compressed", "gzip", BadRequest, "not valid gzip data"),
        (gzip.compress(BODY)[:-20], "gzip", BadRequest, "stream ends early"),
        (gzip.compress(BODY) + b"more", "gzip", BadRequest, "bytes follow the end"),
        (zlib.compress(BODY)[:40], "deflate", BadRequest, "not valid deflate data"),
        (gzip.compress(BODY + b" "), "gzip", PayloadTooLarge, "inflates past 32000 bytes"),
    ],
)
def test_a_body_that_is_not_what_its_coding_says_is_a_client_error(body, coding, error, message):
    with pytest.raises(error, match=message):
        decompressed(body, coding, len(BODY))


def zip_bomb(inflated_bytes: int) -> bytes:
    """A gzip stream of `inflated_bytes` zeros, made without compressing them all: independent blocks repeated."""
    block = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)  # the same bytes each time
    return first + again * (inflated_bytes // block - 1) + compressor.flush()


def test_a_ten_gigabyte_zip_bomb_is_refused_after_inflating_at_most_the_limit():
    bomb = zip_bomb(10 << 30)
    limit = 16 << 20  # a MAX_BODY_BYTES the bomb itself fits under (about 10 MiB: deflate's ratio is 1,000 at most)
    assert len(bomb) < limit
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(PayloadTooLarge, match="inflates past 16777216 bytes"):
            decompressed(bomb, "gzip", limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * limit, f"{peak:,} bytes held to refuse it"
    assert time.perf_counter() - started < 5  # inflating 16 MiB, not 10 GiB (a fraction of a second here)
