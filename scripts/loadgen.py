"""A light closed-loop HTTP load generator: N clients, each sends its next request when the last answer arrives.

It speaks plain HTTP/1.1 with keep-alive over asyncio streams, so one Python process
drives hundreds of connections with little CPU and leaves the cores to the server. It
records each request's latency, status and the `X-Batch-Size` the server reported.

    python scripts/loadgen.py --url http://127.0.0.1:8000 --body request.json -c 32 -d 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    connection_errors: int = 0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 200) + self.connection_errors

    @property
    def throughput_rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def mean_batch_size(self) -> float:
        return statistics.fmean(self.batch_sizes) if self.batch_sizes else 0.0

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "requests": self.ok + self.errors,
            "errors": self.errors,
            "throughput_rps": round(self.throughput_rps, 1),
            "p50_ms": round(self.percentile_ms(0.50), 2),
            "p99_ms": round(self.percentile_ms(0.99), 2),
            "mean_batch": round(self.mean_batch_size, 2),
        }


async def _client(host, port, request: bytes, stop_at: float, result: LoadResult) -> None:
    reader = writer = None
    while time.monotonic() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("server closed the connection")
            status = int(status_line.split()[1])
            length, batch_size, close = 0, None, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "x-batch-size":
                    batch_size = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            await reader.readexactly(length)
            result.latencies_s.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if batch_size is not None:
                result.batch_sizes.append(batch_size)
            if close:
                writer.close()
                writer = None
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            result.connection_errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)  # back off before reconnecting
    if writer is not None:
        writer.close()


def _request_bytes(url: str, path: str, body: bytes) -> tuple[str, int, bytes]:
    parsed = urllib.parse.urlsplit(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return parsed.hostname, parsed.port or 80, head.encode() + body


def run_closed_loop(url: str, body: bytes, concurrency: int, duration_s: float, path: str = "/predict") -> LoadResult:
    """Drive `concurrency` clients against `url + path` for `duration_s` seconds."""
    host, port, request = _request_bytes(url, path, body)
    result = LoadResult(concurrency, duration_s)

    async def main():
        stop_at = time.monotonic() + duration_s
        started = time.monotonic()
        await asyncio.gather(*(_client(host, port, request, stop_at, result) for _ in range(concurrency)))
        result.duration_s = time.monotonic() - started

    asyncio.run(main())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--body", required=True, help="file holding the JSON request body")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds")
    args = parser.parse_args()
    with open(args.body, "rb") as stream:
        body = stream.read()
    print(json.dumps(run_closed_loop(args.url, body, args.concurrency, args.duration, args.path).summary()))


if __name__ == "__main__":
    main()
