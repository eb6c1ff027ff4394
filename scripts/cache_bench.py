"""What the result cache gains when instances repeat and costs when none do, in one run.

    python -m scripts.cache_bench --model models/heavy.keras --duration 10 [--redis]

Two servers of the model with default settings, one of them with CACHE_MAX_BYTES (and with
`--redis`, a shared Redis tier on a throwaway redis-server). wrk drives each in turn, 32
connections (`--connections`) in a closed loop, one instance a request, alternating between the
servers, the first of a round going second in the next (`--rounds` rounds):
- 90 % repeats: nine requests in ten carry one of 100 hot instances, the tenth one never sent before;
- 0 % repeats: every instance is new.
Reported: each server's median throughput; the ratio cached / uncached, the median of the
rounds' ratios (the two runs of a round are next to each other in time, so a slow spell of the
shared machine slows both); the hit ratio the cached server counted (/metrics). The cache should
give >= 5x at 90 % and cost <= 3 % at 0 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from scripts.bench import machine_description, publish, run_wrk, server_cpu_seconds
from scripts.launcher import LiveServer
from scripts.local_redis import LocalRedis
from scripts.predict_requests import sample_instance
from service.caching.keys import model_identity
from service.caching.result_cache import ResultCache
from service.caching.tiers import LocalTier
from service.protocols.tfserving_rest import PredictEndpoint

HOT_INSTANCES = 100
REQUESTS_PER_LIST = 20_000  # more than a run sends: no new instance is sent twice
CACHE_BYTES = 256 * 1024 * 1024


def bodies(metadata: dict, repeated: float, seed: int) -> list[bytes]:
    """REQUESTS_PER_LIST single-instance bodies; a `repeated` share of them from HOT_INSTANCES, the rest all new.

    Instances are shaped as the model's first input (predict_requests.sample_instance), of numbers in [0, 1).
    """
    shape = np.shape(sample_instance(metadata, random.Random(0)))
    choices, values = random.Random(seed), np.random.default_rng(seed)

    def body(generator: np.random.Generator) -> bytes:
        return json.dumps({"instances": [generator.random(shape).round(3).tolist()]}).encode()

    hot = [body(np.random.default_rng(index)) for index in range(HOT_INSTANCES)]
    return [choices.choice(hot) if choices.random() < repeated else body(values) for _ in range(REQUESTS_PER_LIST)]


def cache_counts(url: str) -> tuple[float, float]:
    """(hits, misses) of the local tier plus the Redis tier's hits, from /metrics."""
    with urllib.request.urlopen(f"{url}/metrics") as answer:
        text = answer.read().decode()
    hits = misses = 0.0
    for line in text.splitlines():
        if line.startswith("model_server_cache_hits_total"):
            hits += float(line.split()[-1])
        elif line.startswith('model_server_cache_misses_total{tier="local"}'):
            misses += float(line.split()[-1])
    return hits, misses


def cache_work_per_miss_us(metadata: dict, requests: int = 5000) -> float:
    """CPU of what the cache adds to a single-instance request it misses: body lookup, keys, lookup, store, merge."""
    input_name = next(iter(metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]))
    rng = random.Random(0)
    instances = [np.asarray(sample_instance(metadata, rng), np.float32)[None] for _ in range(requests)]
    bodies = [json.dumps({"instances": instance.tolist()}).encode() for instance in instances]
    answer = {"output": np.zeros((1, 10), np.float32)}
    cache = ResultCache(model_identity("bench", 1, "digest"), LocalTier(CACHE_BYTES))
    started = time.process_time()
    for instance, body in zip(instances, bodies, strict=True):
        cache.repeated_answer(PredictEndpoint.protocol, body)
        lookup = cache.lookup({input_name: instance}, 1)
        cache.store(lookup, answer)
        lookup.merge(answer)
    return (time.process_time() - started) / requests * 1e6


def batch_sizes(url: str) -> tuple[float, float]:
    """(instances, passes) the server has run, from /metrics."""
    with urllib.request.urlopen(f"{url}/metrics") as answer:
        lines = answer.read().decode().splitlines()
    prefix = "model_server_batch_size_instances_"
    values = {line.split()[0]: float(line.split()[-1]) for line in lines if line.startswith(prefix)}
    return values.get(prefix + "sum", 0.0), values.get(prefix + "count", 0.0)


def measure(plain: LiveServer, cached: LiveServer, metadata: dict, percent: int, args) -> str:
    """One table row: both servers alternately under the workload of `percent` % repeats."""
    runs: dict[str, list[tuple[float, float, float]]] = {"plain": [], "cached": []}  # (req/s, CPU ms/req, wrk cores)
    hits_before, misses_before = cache_counts(cached.url)
    for round_index in range(args.rounds):
        order = (("plain", plain), ("cached", cached))
        for name, server in order if round_index % 2 == 0 else reversed(order):  # neither always goes first
            seed = 1000 * round_index + (1 if name == "cached" else 0) + 10 * percent
            requests = bodies(metadata, percent / 100, seed)
            cpu_before, batches_before = server_cpu_seconds(server), batch_sizes(server.url)
            load = run_wrk(server.url, requests, args.connections, args.duration)
            server_cpu_ms = 1000 * (server_cpu_seconds(server) - cpu_before) / max(1, load.ok)
            batches = [after - before for after, before in zip(batch_sizes(server.url), batches_before, strict=True)]
            if load.errors:
                raise RuntimeError(f"{name}: {load.errors} errors")
            runs[name].append((load.throughput_rps, server_cpu_ms, load.client_cpu_s / load.duration_s))
            print(
                f"{percent} % repeats, {name}, round {round_index + 1}: {load.throughput_rps:.1f} req/s, "
                f"{server_cpu_ms:.2f} ms CPU/request, mean batch {batches[0] / max(1.0, batches[1]):.1f}",
                flush=True,
            )
    hits_after, misses_after = cache_counts(cached.url)
    hits, misses = hits_after - hits_before, misses_after - misses_before
    plain_run, cached_run = (sorted(runs[name])[(len(runs[name]) - 1) // 2] for name in ("plain", "cached"))
    # Each round's two runs are next to each other in time, so a slow spell of the shared machine slows both.
    ratio = statistics.median(c[0] / p[0] for p, c in zip(runs["plain"], runs["cached"], strict=True))
    return (
        f"| {percent} % repeats | {plain_run[0]:.1f} | {cached_run[0]:.1f} | **{ratio:.2f}** | "
        f"{hits / max(1.0, hits + misses):.2f} | {plain_run[1]:.2f} / {cached_run[1]:.2f} | "
        f"{plain_run[2]:.2f} / {cached_run[2]:.2f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/heavy.keras")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each server per workload")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections, each a closed loop")
    parser.add_argument("--redis", action="store_true", help="add the shared Redis tier")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of both servers")
    parser.add_argument("--workloads", default="90,0", help="percentages of repeats to measure, comma-separated")
    parser.add_argument(
        "--no-cache", action="store_true", help="leave the cache off in both servers: the bench's own spread (A/A)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    model_name = Path(args.model.rstrip("/")).stem
    both_env = {"MODEL_PATH": args.model, **dict(setting.split("=", 1) for setting in args.set)}
    cache_bytes = 0 if args.no_cache else CACHE_BYTES
    cached_env = {**both_env, "CACHE_MAX_BYTES": str(cache_bytes)}
    with contextlib.ExitStack() as stack:
        if args.redis:
            cached_env["REDIS_URL"] = stack.enter_context(LocalRedis())
        plain = stack.enter_context(LiveServer(both_env))
        cached = stack.enter_context(LiveServer(cached_env))
        with urllib.request.urlopen(f"{plain.url}/v1/models/{model_name}/metadata") as answer:
            metadata = json.load(answer)
        rows = [measure(plain, cached, metadata, percent, args) for percent in map(int, args.workloads.split(","))]
    tier = "local tier and a shared Redis" if args.redis else "local tier"
    report = (
        f"Model `{args.model}`, {' '.join(args.set) or 'default settings'}; cache: CACHE_MAX_BYTES={cache_bytes}, "
        f"{tier}; machine: {machine_description()}. wrk, {args.connections} connections, {args.duration:g} s a run, "
        f"{args.rounds} rounds of one run each, servers alternating (ABBA); ratio: the median of the rounds' ratios. "
        "CPU: the server's processes per request, and wrk's "
        "in cores (on the same machine).\n\n"
        "| workload | without cache (median req/s) | with cache (median req/s) | ratio | hit ratio counted "
        "| server CPU ms/request without / with | wrk cores without / with |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"In-process, the cache's work for a request it misses: {cache_work_per_miss_us(metadata):.0f} us of CPU."
    )
    publish(report, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
