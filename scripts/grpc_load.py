"""A lean gRPC load client: unary calls over HTTP/2 on asyncio streams, as cheap per call as loadgen's HTTP/1.1 one.

grpc.aio, the reference client (loadgen.run_grpc_closed_loop), spends about twice the CPU per
call of the bench's HTTP/1.1 client; on a machine of two cores that CPU is taken from the server
measured, so a comparison of protocols would measure the clients too. This client speaks only
what a unary call needs: its request headers are HPACK literals written once per connection, its
windows are opened wide at the start, and an answer is read to its trailers (`grpc-status`,
`x-batch-size`). tests/scripts/test_protocol_bench.py runs it beside grpc.aio.
"""

from __future__ import annotations

import asyncio
import struct
import time

from scripts.loadgen import LoadResult, run_timed
from service.web import http2

# gRPC's codes the bench tells apart, as the HTTP statuses LoadResult counts (loadgen.GRPC_STATUSES's).
STATUS_AS_HTTP = {0: 200, 3: 400, 4: 504, 5: 404, 8: 503, 14: 503}
WIDE_WINDOW = (1 << 31) - 1
MESSAGE_PREFIX = struct.Struct(">BI")


def run_lean_grpc_closed_loop(
    target: str, method: str, message: bytes, concurrency: int, duration_s: float
) -> LoadResult:
    """`concurrency` clients, each on its own connection, calling `method` with `message` in a closed loop."""
    result = LoadResult("closed", concurrency)

    async def main():
        stop_at = time.monotonic() + duration_s
        await asyncio.gather(*(_client(target, method, message, stop_at, result) for _ in range(concurrency)))

    return run_timed(result, main)


async def _client(target: str, method: str, message: bytes, stop_at: float, result: LoadResult) -> None:
    host, _, port = target.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        http2.PREFACE
        + http2.frame(http2.SETTINGS, 0, 0, http2.SETTING.pack(http2.INITIAL_WINDOW_SIZE, WIDE_WINDOW))
        + http2.frame(http2.WINDOW_UPDATE, 0, 0, http2.WINDOW.pack(WIDE_WINDOW - http2.DEFAULT_WINDOW))
    )
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.encode()),
        (b":authority", target.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),  # no grpc-timeout: the HTTP client sends no deadline either, and one costs admission
    ]
    block = b"".join(http2.literal_field(name, value) for name, value in fields)
    body = MESSAGE_PREFIX.pack(0, len(message)) + message
    decoder = http2.HeaderDecoder(1 << 16)
    stream_id = 1
    try:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            writer.write(
                http2.frame(http2.HEADERS, http2.END_HEADERS, stream_id, block)
                + http2.frame(http2.DATA, http2.END_STREAM, stream_id, body)
            )
            status, batch = await _answer(reader, writer, decoder, stream_id)
            result.count_answer(STATUS_AS_HTTP.get(status, 500), time.perf_counter() - started, batch)
            stream_id += 2
    finally:
        writer.close()


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoder: http2.HeaderDecoder, stream_id: int
) -> tuple[int, int | None]:
    """Read frames until the call's trailers: its gRPC status and the server's `x-batch-size`."""
    while True:
        length, kind, flags, frame_stream = http2.read_frame_head(await reader.readexactly(http2.FRAME_HEAD.size))
        payload = await reader.readexactly(length)
        if kind == http2.SETTINGS and not flags & http2.ACK:
            writer.write(http2.frame(http2.SETTINGS, http2.ACK, 0, b""))
        elif kind == http2.PING and not flags & http2.ACK:
            writer.write(http2.frame(http2.PING, http2.ACK, 0, payload))
        elif kind == http2.GOAWAY:
            raise ConnectionError("the server sent GOAWAY")
        elif kind == http2.HEADERS and frame_stream == stream_id:
            headers = dict(decoder.decode(http2.unpadded(flags, payload)))
            if flags & http2.END_STREAM:
                batch = headers.get(b"x-batch-size")
                if b"grpc-status" not in headers:
                    raise ConnectionError(f"trailers without grpc-status: {headers}")
                return int(headers[b"grpc-status"]), int(batch) if batch is not None else None
