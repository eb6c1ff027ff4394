"""What a request of many instances costs and what it does to everyone else, in one run.

    python scripts/bulk_bench.py --model models/heavy.keras --duration 10

Against one server with default settings, but MAX_BODY_BYTES raised to 64 MiB:
1. Throughput in instances/s of 1,000 instances sent as one request (repeated for `--duration`)
   and as single-instance requests from 32 clients (a closed loop by the Python load generator).
2. The same 1,000 instances with 50 % duplicates (500 distinct, each twice), as one request.
3. Fairness: single-instance requests at half load (half the throughput of step 1's 32 clients;
   an open loop), first alone and then while 10,000-instance requests run back to back; their p50 and p99 in both, and
   the ratio. The server should keep the ratio of p99s within 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

from scripts.bench import machine_description, publish
from scripts.launcher import LiveServer
from scripts.loadgen import LoadResult, run_closed_loop, run_open_loop
from scripts.predict_requests import sample_body

BODY_LIMIT_BYTES = 64 * 1024 * 1024


def post(url: str, body: bytes) -> int:
    """POST a predict body; the number of predictions in the 200 answer (raises on any other status)."""
    request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        return len(json.load(answer)["predictions"])


def bulk_throughput(url: str, body: bytes, instances: int, duration_s: float) -> tuple[float, int]:
    """Instances/s of `body` sent one request after another for at least `duration_s`; and how many were sent."""
    started, sent = time.monotonic(), 0
    while sent == 0 or time.monotonic() - started < duration_s:
        assert post(url, body) == instances
        sent += 1
    return sent * instances / (time.monotonic() - started), sent


def with_duplicates(body: bytes) -> bytes:
    """The same number of instances, the first half repeated: 50 % duplicates."""
    instances = json.loads(body)["instances"]
    half = instances[: len(instances) // 2]
    return json.dumps({"instances": half + half}).encode()


def singles_beside_bulk(url: str, single: bytes, bulk: bytes, rate_rps: float, duration_s: float) -> LoadResult:
    """The open loop of single requests while bulk requests run back to back in another thread."""
    stop = threading.Event()
    bulk_sent: list[int] = []

    def keep_sending() -> None:
        while not stop.is_set():
            bulk_sent.append(post(url, bulk))

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    time.sleep(1.0)  # the first bulk request is queued before the measured window starts
    try:
        return run_open_loop(url, single, rate_rps, duration_s)
    finally:
        stop.set()
        sender.join(600)
        if not bulk_sent:
            raise RuntimeError("no bulk request finished during the fairness run")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/heavy.keras")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--bulk-instances", type=int, default=1000)
    parser.add_argument("--fairness-instances", type=int, default=10_000)
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    model_name = Path(args.model.rstrip("/")).stem
    # Default settings, but for the body limit: 10,000 instances of the heavy model are 40 MB of JSON.
    with LiveServer({"MODEL_PATH": args.model, "MAX_BODY_BYTES": str(BODY_LIMIT_BYTES)}) as server:
        single = sample_body(server.url, model_name)
        bulk = sample_body(server.url, model_name, args.bulk_instances)
        big = sample_body(server.url, model_name, args.fairness_instances)
        post(server.url, bulk)  # the first answer of this size warms the client and the server's paths
        one_request, sent = bulk_throughput(server.url, bulk, args.bulk_instances, args.duration)
        singles = run_closed_loop(server.url, single, 32, args.duration)
        repeated, repeated_sent = bulk_throughput(server.url, with_duplicates(bulk), args.bulk_instances, args.duration)
        half_load = singles.throughput_rps / 2  # half of what the server serves of single requests
        alone = run_open_loop(server.url, single, half_load, args.duration)
        beside = singles_beside_bulk(server.url, single, big, half_load, args.duration)
    throughput = (
        "| how 1,000 instances are sent | instances/s | against one request |\n|---|---|---|\n"
        f"| one request of {args.bulk_instances} ({sent} sent) | {one_request:.1f} | 1.00 |\n"
        f"| single requests, 32 clients ({singles.ok} answered, {singles.errors} errors) | "
        f"{singles.throughput_rps:.1f} | {singles.throughput_rps / one_request:.2f} |\n"
        f"| one request, 50 % duplicates ({repeated_sent} sent) | {repeated:.1f} | {repeated / one_request:.2f} |"
    )
    fairness = (
        f"| single requests at {half_load:.0f} req/s | answered | errors | p50 (ms) | p99 (ms) |\n"
        "|---|---|---|---|---|\n"
        f"| alone | {alone.ok} | {alone.errors} | {alone.percentile_ms(0.5):.1f} | {alone.percentile_ms(0.99):.1f} |\n"
        f"| beside {args.fairness_instances}-instance requests | {beside.ok} | {beside.errors} | "
        f"{beside.percentile_ms(0.5):.1f} | {beside.percentile_ms(0.99):.1f} |\n\n"
        f"p99 beside / alone: **{beside.percentile_ms(0.99) / alone.percentile_ms(0.99):.2f}**"
    )
    settings = f"default settings but MAX_BODY_BYTES={BODY_LIMIT_BYTES}"
    report = f"Model `{args.model}`, {settings}; machine: {machine_description()}.\n\n{throughput}\n\n{fairness}"
    publish(report, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
