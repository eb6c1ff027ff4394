"""Soak: many requests through one server, and how much each worker's resident memory grows.

    python scripts/soak.py --model models/digits.keras --requests 100000

Starts the service (real Gunicorn), sends a warm-up of 2,000 requests, records every worker's
resident memory (RSS), then sends `--requests` more in 10-second closed-loop rounds (wrk),
sampling RSS after each round, and prints the growth per worker against the post-warm-up
figure. Exits 1 if a worker grew by more than `--max-growth` or any request failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psutil

from scripts.bench import run_wrk
from scripts.launcher import LiveServer
from scripts.predict_requests import sample_body


def worker_rss_mib(server: LiveServer) -> dict[int, float]:
    return {p.pid: p.memory_info().rss / 2**20 for p in psutil.Process(server.process.pid).children()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/digits.keras")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-growth", type=float, default=0.10, help="largest RSS growth allowed, as a fraction")
    parser.add_argument("--env", nargs="*", default=[], help="extra server settings, NAME=VALUE")
    args = parser.parse_args()

    env = {"MODEL_PATH": args.model, "LOG_LEVEL": "warning", **dict(pair.split("=", 1) for pair in args.env)}
    with LiveServer(env) as server:
        body = sample_body(server.url, Path(args.model.rstrip("/")).stem)
        warm_up = 0
        while warm_up < 2000:
            warm_up += run_wrk(server.url, body, args.concurrency, 2.0).ok
        baseline = worker_rss_mib(server)
        print(
            f"after {warm_up} warm-up requests: " + ", ".join(f"{pid}: {mib:.0f} MiB" for pid, mib in baseline.items())
        )
        sent = failed = 0
        while sent < args.requests:
            result = run_wrk(server.url, body, args.concurrency, 10.0)
            sent, failed = sent + result.ok + result.errors, failed + result.errors
            now = worker_rss_mib(server)
            print(
                f"{sent:>7} requests, {failed} failed: "
                + ", ".join(f"{pid}: {mib:.0f} MiB" for pid, mib in now.items())
            )
    growth = {pid: now[pid] / baseline[pid] - 1 for pid in baseline if pid in now}
    replaced = set(baseline) - set(now)
    print(
        f"{sent} requests, {failed} failed; RSS growth per worker: "
        + ", ".join(f"{pid}: {100 * g:+.1f}%" for pid, g in growth.items())
        + (f"; workers replaced during the soak: {sorted(replaced)}" if replaced else "")
    )
    ok = failed == 0 and not replaced and all(g < args.max_growth for g in growth.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
