"""Serve one model with several worker counts and compare them under the same closed-loop load.

This is the evidence behind the planner's default worker count on CPU machines
(docs/sizing.md). Each configuration runs under a real Gunicorn on a free port.

    python scripts/compare_workers.py --model models/heavy.keras --workers 1 2 3 -c 1 8 32 64 -d 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scripts.launcher import LiveServer
from scripts.loadgen import run_closed_loop
from scripts.predict_requests import sample_body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/heavy.keras")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("-c", "--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("-d", "--duration", type=float, default=8.0, help="seconds per load level")
    parser.add_argument("--worker-class", default="gevent")
    args = parser.parse_args()
    name = Path(args.model).stem
    rows = []
    for workers in args.workers:
        env = {"MODEL_PATH": args.model, "WORKERS": str(workers), "WORKER_CLASS": args.worker_class}
        with LiveServer(env) as server:
            body = sample_body(server.url, name)
            run_closed_loop(server.url, body, max(args.concurrency), 2.0)  # settle caches and thread pools
            for concurrency in args.concurrency:
                summary = {
                    "workers": workers,
                    **run_closed_loop(server.url, body, concurrency, args.duration).summary(),
                }
                print(json.dumps(summary), flush=True)
                rows.append(summary)
    print("\n| workers | concurrency | throughput (req/s) | p50 (ms) | p99 (ms) | mean batch | errors |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['workers']} | {row['level']} | {row['throughput_rps']} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {row['mean_batch']} | {row['errors']} |"
        )


if __name__ == "__main__":
    main()
