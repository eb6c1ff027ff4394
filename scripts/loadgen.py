"""A light HTTP load generator: closed loop (N clients) or open loop (Poisson arrivals at a fixed rate).

It speaks plain HTTP/1.1 with keep-alive over asyncio streams, so one Python process
drives hundreds of connections with little CPU and leaves the cores to the server; it
reports its own CPU use so a reader can check that. Each request's latency, status and
the `X-Batch-Size` the server reported are recorded.

- Closed loop: each client sends its next request when the last answer arrives, so the
  clients slow down when the server does.
- Open loop: requests are sent at Poisson-distributed times whatever the server does, as
  real users do; latency is measured from the scheduled send time, so a stalled server
  cannot hide its queueing (no coordinated omission).

With `--expect FILE` (a JSON object of `instances` and the `predictions` the model gives
for them) each request carries one of those instances, and every 200 is checked against
its own prediction: a server that mixes up answers under load is caught. Every 503 must
carry `Retry-After`; those that do not are counted.

    python scripts/loadgen.py --url http://127.0.0.1:8000 -c 32 -d 10
    python scripts/loadgen.py --url http://127.0.0.1:8000 --rate 300 -d 10
    python scripts/loadgen.py --url http://127.0.0.1:8000 -c 64 -d 30 --expect answers.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import statistics
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from scripts.predict_requests import sample_body

REQUEST_TIMEOUT_S = 10.0
_CLIENT_ERRORS = (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError)  # ConnectionError is an OSError
MAX_OPEN_LOOP_CONNECTIONS = 2048


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with at least `fraction` of the values at or below it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = math.ceil(round(fraction * len(ordered), 9))  # rounding first: 0.99 * 100 is not 99.000...01
    return ordered[min(max(rank, 1), len(ordered)) - 1]


@dataclass
class LoadResult:
    mode: str  # "closed" or "open"
    level: float  # clients (closed) or requests per second (open)
    duration_s: float = 0.0
    latencies_by_status_s: dict[int, list[float]] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    wrong_answers: int = 0  # 200s whose predictions differ from the expected ones (--expect)
    missing_retry_after: int = 0  # 503s without Retry-After
    batch_sizes: list[int] = field(default_factory=list)
    connection_errors: int = 0
    connection_error_kinds: dict[str, int] = field(default_factory=dict)  # exception name -> count
    client_cpu_s: float = 0.0
    reported_percentiles_ms: dict[float, float] | None = None  # from a tool (wrk) that keeps no latencies
    loaded_on_demand_s: list[float] = field(default_factory=list)  # 200s that waited for their model's load

    def count_answer(self, status: int, latency_s: float, batch_size: int | None) -> None:
        """One answer's status, latency and the batch size the server reported (HTTP or gRPC)."""
        self.latencies_by_status_s.setdefault(status, []).append(latency_s)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if batch_size is not None:
            self.batch_sizes.append(batch_size)

    def add(self, other: LoadResult) -> None:
        """Count `other`'s answers, errors and time in this result too (a load measured in steps)."""
        self.duration_s += other.duration_s
        for status, latencies in other.latencies_by_status_s.items():
            self.latencies_by_status_s.setdefault(status, []).extend(latencies)
            self.statuses[status] = self.statuses.get(status, 0) + other.statuses[status]
        self.connection_errors += other.connection_errors
        for kind, count in other.connection_error_kinds.items():
            self.connection_error_kinds[kind] = self.connection_error_kinds.get(kind, 0) + count
        self.loaded_on_demand_s += other.loaded_on_demand_s

    def count_connection_error(self, kind: str) -> None:
        self.connection_errors += 1
        self.connection_error_kinds[kind] = self.connection_error_kinds.get(kind, 0) + 1

    @property
    def latencies_s(self) -> list[float]:
        """Every answer's latency, whatever its status."""
        return [latency for latencies in self.latencies_by_status_s.values() for latency in latencies]

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
        if self.reported_percentiles_ms is not None:
            return self.reported_percentiles_ms[fraction]
        return 1000 * percentile(self.latencies_s, fraction)

    @property
    def mean_batch_size(self) -> float:
        return statistics.fmean(self.batch_sizes) if self.batch_sizes else 0.0

    @property
    def client_cpu_percent(self) -> float:
        """CPU the load generator used, in percent of one core."""
        return 100 * self.client_cpu_s / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "level": self.level,
            "requests": self.ok + self.errors,
            "errors": self.errors,
            "error_kinds": {
                **{str(k): v for k, v in self.statuses.items() if k != 200},
                "connection": self.connection_errors,
                **{f"connection: {kind}": count for kind, count in self.connection_error_kinds.items()},
            },
            "throughput_rps": round(self.throughput_rps, 1),
            "p50_ms": round(self.percentile_ms(0.50), 2),
            "p99_ms": round(self.percentile_ms(0.99), 2),
            "by_status": {
                str(status): {
                    "count": len(latencies),
                    "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
                    "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
                    "max_ms": round(1000 * max(latencies), 2),
                }
                for status, latencies in sorted(self.latencies_by_status_s.items())
            },
            "wrong_answers": self.wrong_answers,
            "missing_retry_after": self.missing_retry_after,
            "mean_batch": round(self.mean_batch_size, 2),
            "client_cpu_percent": round(self.client_cpu_percent, 1),
        }


@dataclass
class _Answer:
    status: int
    body: bytes
    batch_size: int | None = None  # X-Batch-Size
    retry_after: str | None = None
    closing: bool = False  # the server closes the connection after it
    loaded_on_demand: bool = False  # X-Model-Loaded-On-Demand: its model was loaded for it (MODEL_MEMORY_MB)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> _Answer:
        """Send one request and read the whole answer."""
        self.writer.write(request)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        answer, length = _Answer(int(status_line.split()[1]), b""), 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "x-batch-size":
                answer.batch_size = int(value)
            elif name == "retry-after":
                answer.retry_after = value
            elif name == "connection" and value.lower() == "close":
                answer.closing = True
            elif name == "x-model-loaded-on-demand":
                answer.loaded_on_demand = True
        answer.body = await self.reader.readexactly(length)
        return answer

    def close(self) -> None:
        self.writer.close()


@dataclass
class Workload:
    """The request bodies to send in turn and, when known, the predictions each must get back."""

    bodies: list[bytes]
    expected: list | None = None  # expected[i]: the `predictions` of bodies[i]

    @classmethod
    def from_answers(cls, answers: dict) -> Workload:
        """One single-instance body per instance of `answers` ({"instances": [...], "predictions": [...]})."""
        pairs = list(zip(answers["instances"], answers["predictions"], strict=True))
        return cls([json.dumps({"instances": [i]}).encode() for i, _ in pairs], [[p] for _, p in pairs])


def _close_enough(got, expected, tolerance: float = 1e-4) -> bool:
    """Nested lists equal within a relative (and, near zero, absolute) tolerance: a batch may round differently."""
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(_close_enough(g, e, tolerance) for g, e in zip(got, expected, strict=True))
        )
    return isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=tolerance, abs_tol=tolerance)


class _Target:
    def __init__(self, url: str, path: str, workload: Workload, headers: dict[str, str] | None = None):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.workload = workload
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.requests = [
            f"POST {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
            for body in workload.bodies
        ]
        self._sent = 0

    def next_request(self) -> tuple[bytes, int]:
        """The next request in turn, and its index in the workload."""
        index = self._sent % len(self.requests)
        self._sent += 1
        return self.requests[index], index

    async def connect(self) -> _Connection:
        # A saturated listen backlog drops SYNs, and TCP would retry them for minutes.
        streams = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), REQUEST_TIMEOUT_S)
        return _Connection(*streams)


def _record(result: LoadResult, target: _Target, index: int, answer: _Answer, latency_s: float) -> None:
    result.count_answer(answer.status, latency_s, answer.batch_size)
    if answer.status == 200 and answer.loaded_on_demand:
        result.loaded_on_demand_s.append(latency_s)
    if answer.status == 503 and not answer.retry_after:
        result.missing_retry_after += 1
    expected = target.workload.expected
    if answer.status == 200 and expected is not None:
        try:
            predictions = json.loads(answer.body)["predictions"]
        except (ValueError, KeyError, TypeError):
            predictions = None
        if not _close_enough(predictions, expected[index]):
            result.wrong_answers += 1


async def _closed_client(target: _Target, stop_at: float, result: LoadResult, honor_retry_after: bool) -> None:
    connection = None
    while time.monotonic() < stop_at:
        try:
            connection = connection or await target.connect()
            request, index = target.next_request()
            started = time.perf_counter()
            answer = await asyncio.wait_for(connection.exchange(request), REQUEST_TIMEOUT_S)
            _record(result, target, index, answer, time.perf_counter() - started)
            if answer.closing:
                connection.close()
                connection = None
            if honor_retry_after and answer.status == 503 and answer.retry_after:
                await asyncio.sleep(min(_retry_after_s(answer.retry_after), max(0.0, stop_at - time.monotonic())))
        except _CLIENT_ERRORS as error:
            result.count_connection_error(type(error).__name__)
            if connection is not None:
                connection.close()
            connection = None
            await asyncio.sleep(0.01)  # back off before reconnecting
    if connection is not None:
        connection.close()


async def _open_request(target: _Target, idle: list, scheduled_at: float, result: LoadResult, open_count: list):
    connection = None
    request, index = target.next_request()
    for attempt in range(2):
        # A kept-alive connection the server has since closed (KEEPALIVE_S) fails at once: retry once on a
        # new one, as HTTP clients' pools do, never on another idle one that may be just as stale.
        reused = bool(idle) and attempt == 0
        connection = idle.pop() if reused else None
        try:
            if connection is None:
                if open_count[0] >= MAX_OPEN_LOOP_CONNECTIONS:
                    result.count_connection_error("client saturated")  # count it, do not wait
                    return
                open_count[0] += 1
                connection = await target.connect()
            answer = await asyncio.wait_for(connection.exchange(request), REQUEST_TIMEOUT_S)
        except _CLIENT_ERRORS as error:
            if connection is not None:
                connection.close()
                open_count[0] -= 1
            if reused and attempt == 0:
                continue
            result.count_connection_error(f"{type(error).__name__} on a {'reused' if reused else 'new'} connection")
            return
        _record(result, target, index, answer, time.perf_counter() - scheduled_at)
        if answer.closing:
            connection.close()
            open_count[0] -= 1
        else:
            idle.append(connection)
        return


def run_timed(result: LoadResult, coroutine_factory) -> LoadResult:
    """Run the load `coroutine_factory` makes; `result` gets its duration and this process's CPU (the clients')."""
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    asyncio.run(coroutine_factory())
    result.duration_s = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    result.client_cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return result


def _retry_after_s(retry_after: str) -> float:
    """Retry-After in seconds (this server sends whole seconds; an HTTP date counts as one second)."""
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        return 1.0


def run_closed_loop(
    url: str,
    body: bytes | Workload,
    concurrency: int,
    duration_s: float,
    path: str = "/predict",
    honor_retry_after: bool = False,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Drive `concurrency` clients against `url + path` for `duration_s` seconds.

    A client sends its next request as soon as it has an answer; with `honor_retry_after`, after a 503 it
    first waits as long as the answer's `Retry-After` says, as a well-behaved client does.
    """
    target, result = _Target(url, path, _workload(body), headers), LoadResult("closed", concurrency)

    async def main():
        stop_at = time.monotonic() + duration_s
        clients = (_closed_client(target, stop_at, result, honor_retry_after) for _ in range(concurrency))
        await asyncio.gather(*clients)

    return run_timed(result, main)


# The HTTP status a gRPC answer is recorded under: the one the REST routes give for the same outcome.
GRPC_STATUSES = {"OK": 200, "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def run_grpc_closed_loop(target: str, method: str, message: bytes, concurrency: int, duration_s: float) -> LoadResult:
    """`concurrency` gRPC clients, each on its own connection, calling `method` with the serialized `message`.

    The message is sent as bytes and the answer kept as bytes, so the client spends no CPU on protobuf;
    each call is recorded under the HTTP status of its outcome (GRPC_STATUSES) with its `x-batch-size`.
    """
    import grpc

    result = LoadResult("closed", concurrency)

    async def client(stop_at: float) -> None:
        # Channels of one process share connections unless each has its own subchannel pool.
        async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call = channel.unary_unary(method)
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                answer = call(message, timeout=REQUEST_TIMEOUT_S)
                try:
                    await answer
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                latency_s = time.perf_counter() - started
                batch = dict(await answer.trailing_metadata() or ()).get("x-batch-size")
                result.count_answer(GRPC_STATUSES.get(code, 500), latency_s, int(batch) if batch is not None else None)

    async def main():
        stop_at = time.monotonic() + duration_s
        await asyncio.gather(*(client(stop_at) for _ in range(concurrency)))

    return run_timed(result, main)


def run_open_loop(
    url: str, body: bytes | Workload, rate_rps: float, duration_s: float, path: str = "/predict", seed: int = 0
) -> LoadResult:
    """Send requests at Poisson arrivals of `rate_rps` for `duration_s` seconds, then wait for the answers."""
    (result,) = run_together(url, [Load(path, body, rate_rps=rate_rps)], duration_s, seed)
    return result


@dataclass(frozen=True)
class Load:
    """One of the loads `run_together` drives: an open loop at `rate_rps`, or a closed loop of `clients`."""

    path: str
    body: bytes | Workload
    rate_rps: float = 0.0
    clients: int = 0
    honor_retry_after: bool = False  # closed loop: wait as a 503 says, or retry at once
    url: str = ""  # another server's than run_together's


def run_together(url: str, loads: list[Load], duration_s: float, seed: int = 0) -> list[LoadResult]:
    """Drive every load at once for `duration_s` seconds (one event loop), then wait for the open loops' answers.

    Each load's result is its own; the client CPU is the whole run's, in each.
    """
    targets = [_Target(load.url or url, load.path, _workload(load.body)) for load in loads]
    results = [LoadResult("open" if load.rate_rps else "closed", load.rate_rps or load.clients) for load in loads]

    async def open_loop(target: _Target, rate_rps: float, result: LoadResult, arrivals: random.Random) -> None:
        idle, open_count, pending = [], [0], set()
        start = time.perf_counter()
        scheduled_at = start
        while True:
            scheduled_at += arrivals.expovariate(rate_rps)
            if scheduled_at - start > duration_s:
                break
            delay = scheduled_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_open_request(target, idle, scheduled_at, result, open_count))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
        for connection in idle:
            connection.close()

    async def main():
        stop_at = time.monotonic() + duration_s
        runs = []
        for index, (load, target, result) in enumerate(zip(loads, targets, results, strict=True)):
            if load.rate_rps:
                runs.append(open_loop(target, load.rate_rps, result, random.Random(seed + index)))
            else:
                runs += [_closed_client(target, stop_at, result, load.honor_retry_after) for _ in range(load.clients)]
        await asyncio.gather(*runs)

    run_timed(results[0], main)
    for result in results[1:]:
        result.duration_s, result.client_cpu_s = results[0].duration_s, results[0].client_cpu_s
    return results


def _workload(body: bytes | Workload) -> Workload:
    return body if isinstance(body, Workload) else Workload([body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="digits", help="model name, to shape the request from its metadata")
    parser.add_argument("--body", help="file holding the JSON request body (default: built from the metadata)")
    parser.add_argument("--expect", help="JSON file of `instances` and their `predictions`: send those, check the 200s")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="closed loop: number of clients")
    parser.add_argument("--rate", type=float, help="open loop: requests per second (instead of --concurrency)")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds")
    parser.add_argument(
        "--honor-retry-after", action="store_true", help="closed loop: after a 503, wait as its Retry-After says"
    )
    parser.add_argument(
        "--header", action="append", default=[], help="closed loop: send this header too, 'Name: value' (repeatable)"
    )
    args = parser.parse_args()
    headers = dict(tuple(part.strip() for part in header.split(":", 1)) for header in args.header)
    if args.expect:
        body = Workload.from_answers(json.loads(Path(args.expect).read_text()))
    elif args.body:
        body = Path(args.body).read_bytes()
    else:
        body = sample_body(args.url, args.model)
    if args.rate:
        result = run_open_loop(args.url, body, args.rate, args.duration)
    else:
        result = run_closed_loop(
            args.url, body, args.concurrency, args.duration, honor_retry_after=args.honor_retry_after, headers=headers
        )
    print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()
