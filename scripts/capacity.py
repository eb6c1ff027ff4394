"""How many pods a daily request volume needs, and what each pod should ask Kubernetes for.

    python scripts/capacity.py plan --bench out/bench-digits.json --slo-ms 100 \\
        --daily-requests 1e6 1e7 1e8 --peak-to-average 2
    python scripts/capacity.py resources --model models/digits.keras --cores 2

`plan` reads a `scripts/bench.py --json` run: a pod's capacity is the highest throughput
it sustained with no errors while its p99 stayed within the latency objective. Peak
traffic is the daily average times the peak-to-average ratio (one million requests a day
is 11.6/s on average, 23/s at a peak of 2x). Pods are planned to run at the HPA's CPU
target at peak, so the autoscaler has room to react, plus one spare so a pod can be lost
or drained (the PodDisruptionBudget allows one) without breaking the objective.

`resources` measures the model's footprint per worker (or reads it from the footprint
cache, as the Gunicorn master does) and prints the container's requests and limits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from service.backends.footprint import measure_footprint
from service.settings import load_settings
from service.sizing.planner import CPU_CORES_PER_WORKER

SECONDS_PER_DAY = 86_400
MIB = 1024 * 1024
MASTER_MIB = 100  # the Gunicorn master: Python, Gunicorn, psutil, no TensorFlow
MEMORY_LIMIT_MARGIN = 1.5  # batches larger than the warm-up's, allocator fragmentation
MIN_REPLICAS = 2  # one pod is no service: a rollout or a node drain would stop it


class CapacityError(RuntimeError):
    """The benchmark cannot answer the question; the message says what to measure."""


@dataclass(frozen=True)
class PodCapacity:
    requests_per_s: float
    p99_ms: float
    load: str  # the load level where it was measured


@dataclass(frozen=True)
class ReplicaPlan:
    daily_requests: float
    average_rps: float
    peak_rps: float
    replicas_at_peak: int  # at the CPU target, with one spare
    min_replicas: int
    max_replicas: int


def pod_capacity(bench: dict, slo_ms: float, server: str | None = None) -> PodCapacity:
    """The best error-free throughput of `server` (default: the first in the run) with p99 <= `slo_ms`."""
    rows = [row for row in bench["rows"] if row["server"] != "baseline"]
    server = server or (rows[0]["server"] if rows else None)
    candidates = [row for row in rows if row["server"] == server and row["errors"] == 0 and row["p99_ms"] <= slo_ms]
    if not candidates:
        raise CapacityError(
            f"no load level of server {server!r} in the benchmark kept p99 within {slo_ms:g} ms without errors: "
            "measure lower loads (bench.py --concurrency, --rates) or raise the objective"
        )
    best = max(candidates, key=lambda row: row["throughput_rps"])
    unit = "clients" if best["mode"] == "closed" else "requests/s"
    return PodCapacity(best["throughput_rps"], best["p99_ms"], f"{best['mode']} loop, {best['level']:g} {unit}")


def plan_replicas(
    daily_requests: float, peak_to_average: float, capacity: PodCapacity, cpu_target: float, burst: float
) -> ReplicaPlan:
    """Replicas so that peak traffic runs each pod at `cpu_target` of its capacity, plus one spare."""
    average = daily_requests / SECONDS_PER_DAY
    peak = average * peak_to_average
    per_pod_at_target = capacity.requests_per_s * cpu_target
    at_peak = math.ceil(peak / per_pod_at_target) + 1
    return ReplicaPlan(
        daily_requests=daily_requests,
        average_rps=average,
        peak_rps=peak,
        replicas_at_peak=at_peak,
        min_replicas=max(MIN_REPLICAS, math.ceil(average / per_pod_at_target) + 1),
        max_replicas=max(MIN_REPLICAS, math.ceil(peak * burst / per_pod_at_target) + 1),
    )


def format_plans(plans: list[ReplicaPlan], capacity: PodCapacity, slo_ms: float, cpu_target: float) -> str:
    lines = [
        f"Pod capacity: {capacity.requests_per_s:.1f} requests/s with p99 {capacity.p99_ms:.1f} ms <= {slo_ms:g} ms "
        f"({capacity.load}); planned at {cpu_target:.0%} of it = {capacity.requests_per_s * cpu_target:.1f}/s per pod.",
        "",
        "| requests a day | average (req/s) | peak (req/s) | pods at peak (incl. 1 spare) | HPA minReplicas | "
        "HPA maxReplicas |",
        "|---|---|---|---|---|---|",
    ]
    for plan in plans:
        lines.append(
            f"| {plan.daily_requests:,.0f} | {plan.average_rps:.1f} | {plan.peak_rps:.1f} | {plan.replicas_at_peak} | "
            f"{plan.min_replicas} | {plan.max_replicas} |"
        )
    lines += ["", f"HPA: target averageUtilization {cpu_target:.0%} of the CPU request (deploy/k8s/hpa.yaml)."]
    return "\n".join(lines)


def pod_resources(worker_mib: float, cores: int) -> dict:
    """Requests and limits for a pod of `cores` CPUs running the planner's workers of `worker_mib` each."""
    workers = max(1, cores // CPU_CORES_PER_WORKER)
    request_mib = MASTER_MIB + workers * worker_mib
    return {
        "workers": workers,
        "requests": {"cpu": str(cores), "memory": f"{_round_up(request_mib)}Mi"},
        "limits": {"cpu": str(cores), "memory": f"{_round_up(request_mib * MEMORY_LIMIT_MARGIN)}Mi"},
    }


def _round_up(mib: float, step: int = 128) -> int:
    return step * math.ceil(mib / step)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="replicas and HPA settings for daily volumes")
    plan.add_argument("--bench", type=Path, required=True, help="a scripts/bench.py --json output")
    plan.add_argument("--server", help="which of the run's servers (default: the first)")
    plan.add_argument("--slo-ms", type=float, default=100.0, help="p99 latency objective")
    plan.add_argument("--daily-requests", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    plan.add_argument("--peak-to-average", type=float, default=2.0)
    plan.add_argument("--cpu-target", type=float, default=0.7, help="the HPA's averageUtilization, as a fraction")
    plan.add_argument("--burst", type=float, default=1.5, help="maxReplicas covers this multiple of the peak")
    resources = commands.add_parser("resources", help="a pod's CPU and memory requests and limits")
    resources.add_argument("--model", required=True)
    resources.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()

    if args.command == "plan":
        bench = json.loads(args.bench.read_text())
        try:
            capacity = pod_capacity(bench, args.slo_ms, args.server)
        except CapacityError as error:
            print(error, file=sys.stderr)
            return 1
        plans = [
            plan_replicas(volume, args.peak_to_average, capacity, args.cpu_target, args.burst)
            for volume in args.daily_requests
        ]
        print(f"Model {bench['model']} on {bench['machine']}.")
        print(format_plans(plans, capacity, args.slo_ms, args.cpu_target))
    else:
        settings = load_settings({"MODEL_PATH": args.model})
        footprint = measure_footprint(args.model, settings.padded_batch_sizes(), settings.footprint_cache)
        worker_mib = footprint.worker_bytes / MIB
        print(f"Model {args.model}: {worker_mib:.0f} MiB per worker (measured footprint).")
        print(json.dumps(pod_resources(worker_mib, args.cores), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
