"""Overload without collapse, measured in one run: goodput at 2x and 4x capacity from clients that never back off.

    python scripts/overload.py --model models/heavy.keras --duration 15

1. Capacity: the throughput of a closed loop that fills the worker's queue without
   overflowing it (`--capacity-clients`, 128 by default), all answered 200.
2. Closed loops that ignore Retry-After and retry at once, with 2x and 4x `MAX_QUEUE`
   clients per worker: wrk (C, the way a benchmark or a naive client hammers) and the
   Python load generator (which times refusals and acceptances apart).
3. Open loops (Poisson) at 2x and 4x the capacity: arrivals that do not slow down at all.

Each row: goodput (200s per second) as a fraction of the capacity, refusals (503), the
refusals' p50, and the accepted requests' p99 as their clients saw it and as the worker saw
it (from reading the request to answering it, from its access lines), the latter set against
a full queue's drain time at the measured capacity plus one full pass (from `/stats`). The
two p99s differ by the time a request waits unread while the queue is full
(service/web/backpressure.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from functools import partial
from pathlib import Path

import requests

from scripts.bench import machine_description, run_wrk, server_cpu_seconds
from scripts.launcher import LiveServer
from scripts.loadgen import LoadResult, percentile, run_closed_loop, run_open_loop
from scripts.predict_requests import sample_body


def full_pass_ms(url: str) -> tuple[float, int]:
    """The worker's own estimate of its largest pass, and that batch size (GET /stats)."""
    stats = requests.get(f"{url}/stats", timeout=10).json()
    by_size = stats["cost_model"]["ms_by_batch_size"]
    largest = max(by_size, key=int)
    return by_size[largest], int(largest)


ACCESS_LINE = re.compile(r"model_server\.access \[[^\]]*\] POST \S+ 200 ([0-9.]+) ms")


def served_p99_ms(log_since: str) -> float | None:
    """p99 of the worker's own time to answer a predict 200, from its access lines (default text format).

    Timed from when the worker has read the request: a request left unread while the queue is
    full (service/web/backpressure.py) waits in the client's socket, which the client's p99 counts.
    """
    durations = [float(found) for found in ACCESS_LINE.findall(log_since)]
    return round(percentile(durations, 0.99), 1) if durations else None


def row(label: str, result: LoadResult, capacity_rps: float, server_cpu_s: float, log_since: str) -> dict:
    """One load's figures; wrk keeps no latencies, so its refusal and client-side acceptance times are left blank."""
    refused = result.latencies_by_status_s.get(503, [])
    accepted = result.latencies_by_status_s.get(200, [])
    return {
        "load": label,
        "goodput_rps": round(result.throughput_rps, 1),
        "of_capacity": round(result.throughput_rps / capacity_rps, 3),
        "refused": result.statuses.get(503, 0),
        "other_errors": result.errors - result.statuses.get(503, 0),
        "refused_p50_ms": round(1000 * percentile(refused, 0.5), 2) if refused else None,
        "accepted_p99_ms": round(1000 * percentile(accepted, 0.99), 1) if accepted else None,
        "served_p99_ms": served_p99_ms(log_since),
        "server_cpu_percent": round(100 * server_cpu_s / result.duration_s),
        "client_cpu_percent": round(result.client_cpu_percent),
    }


def format_table(rows: list[dict], drain_bound_ms: float) -> str:
    lines = [
        "| load | goodput (req/s) | of capacity | refused (503) | other errors | refusal p50 (ms) | "
        "accepted p99, client (ms) | served p99, server (ms) | served p99 / (full queue + 1 pass) | "
        "server CPU | client CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p99, p50, served = r["accepted_p99_ms"], r["refused_p50_ms"], r["served_p99_ms"]
        lines.append(
            f"| {r['load']} | {r['goodput_rps']} | {r['of_capacity']:.2f} | {r['refused']} | {r['other_errors']} | "
            f"{'-' if p50 is None else p50} | {'-' if p99 is None else p99} | {'-' if served is None else served} | "
            f"{'-' if served is None else f'{served / drain_bound_ms:.2f}'} | {r['server_cpu_percent']}% | "
            f"{r['client_cpu_percent']}% |"
        )
    return "\n".join(lines)


def overloads(url: str, body: bytes, max_queue: int, capacity_rps: float, duration_s: float) -> list:
    """(label, run) for each overload: closed loops of 2x and 4x MAX_QUEUE clients, open loops at 2x and 4x capacity."""
    loads = []
    for factor in (2, 4):
        clients = factor * max_queue
        if shutil.which("wrk"):
            loads.append((f"wrk, {clients} connections", partial(run_wrk, url, body, clients, duration_s)))
        label = f"closed, {clients} clients retrying at once"
        loads.append((label, partial(run_closed_loop, url, body, clients, duration_s)))
    for factor in (2, 4):
        rate = factor * capacity_rps
        loads.append((f"open, {rate:.0f} req/s ({factor}x)", partial(run_open_loop, url, body, rate, duration_s)))
    return loads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/heavy.keras")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load")
    parser.add_argument("--capacity-clients", type=int, default=128)
    parser.add_argument("--env", nargs="*", default=[], help="server settings, NAME=VALUE (defaults otherwise)")
    args = parser.parse_args()
    env = {"MODEL_PATH": args.model, "WORKERS": "1", **dict(pair.split("=", 1) for pair in args.env)}
    rows = []
    with LiveServer(env) as server:
        body = sample_body(server.url, Path(args.model.rstrip("/")).stem)
        described = requests.get(f"{server.url}/stats", timeout=10).json()
        max_queue = int(env.get("MAX_QUEUE", 256))
        run_closed_loop(server.url, body, args.capacity_clients, 3.0)  # settle
        cpu, logged = server_cpu_seconds(server), len(server.log())
        capacity = run_closed_loop(server.url, body, args.capacity_clients, args.duration)
        capacity_rps = capacity.throughput_rps
        label = f"capacity: closed, {args.capacity_clients} clients"
        rows.append(row(label, capacity, capacity_rps, server_cpu_seconds(server) - cpu, server.log()[logged:]))
        loads = overloads(server.url, body, max_queue, capacity_rps, args.duration)
        for label, run in loads:
            print(f"{label} ...", file=sys.stderr, flush=True)
            cpu, logged = server_cpu_seconds(server), len(server.log())
            result = run()
            rows.append(row(label, result, capacity_rps, server_cpu_seconds(server) - cpu, server.log()[logged:]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        pass_ms, batch = full_pass_ms(server.url)
    # A full queue drains at the capacity measured here (passes under load run beside each other and
    # take longer than the cost model's lone pass), and the last request's own pass comes on top.
    drain_bound_ms = 1000 * max_queue / capacity_rps + pass_ms
    print(
        f"Model `{args.model}`, settings {' '.join(args.env) or 'default'} ({described['policy']} policy, max batch "
        f"{described['max_batch_size']}, MAX_QUEUE {max_queue}, one worker unless WORKERS says otherwise), "
        f"{args.duration:g} s per load; machine: {machine_description()}. The worker's full pass (batch {batch}): "
        f"{pass_ms:.1f} ms; at the capacity below a full queue drains in {1000 * max_queue / capacity_rps:.0f} ms, "
        f"so a full queue and one more pass take about {drain_bound_ms:.0f} ms.\n"
    )
    print(format_table(rows, drain_bound_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
