"""Several models in one server, measured against the alternatives in the same run (BENCHMARKS.md, "Many models").

    python -m scripts.many_models_bench                    # every part
    python -m scripts.many_models_bench --part fairness --duration 30

The models: the demo model (`digits`, TensorFlow), `models/heavy.keras` (`heavy`) and the demo
model converted to ONNX (`digits-onnx`), each in a repository of the versions layout (symbolic
links, nothing copied). Each model's capacity is first measured alone (32 closed-loop clients on
a server of it only); the loads offered below are fractions of those capacities, so the same
run means the same thing on a slower or faster machine. Open loops are Poisson arrivals
(scripts/loadgen.py), one body of one instance per model.

1. together: one server of the three models against three servers of one model each, at the
   same offered load (`--share` of each model's capacity, at once): each model's throughput,
   p50/p99 and errors, and the memory of each setup (the sum of its processes' RSS).
2. fairness: the demo model's p99 at `--fair-share` of its capacity, alone and while a client
   of `--flood` connections floods `heavy`, retrying each refusal at once: the ratio (target
   <= 2) and the demo model's refusals (target 0); then the same with each model in a server of its
   own, the reference that shares only the cores.
3. change: the demo and its ONNX twin under load while the config file adds `heavy` and
   removes a fourth model (`spare`): failed requests, and p99 during the change against before.
4. on-demand: `--models` copies of the demo model in a budget (MODEL_MEMORY_MB) that holds
   `--resident` of them, requests spread by a Zipf law (`--zipf`): hit ratio, p50/p99 of the
   requests whose model was loaded and of those that waited for its load
   (X-Model-Loaded-On-Demand), loads and evictions, and the worker's memory against the budget.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from scripts.bench import machine_description, publish
from scripts.launcher import PROJECT_ROOT, LiveServer
from scripts.loadgen import Load, LoadResult, percentile, run_closed_loop, run_together
from scripts.predict_requests import sample_body
from service.backends.footprint import measure_footprint
from service.settings import Settings

ONNX_CACHE = Path("~/.cache/tf-model-server/bench/digits.onnx").expanduser()
STEP_S = 2.0


def prepare() -> dict[str, Path]:
    """Each model's version directory's file, linked from the project's (the ONNX file converted once)."""
    if not ONNX_CACHE.exists():
        ONNX_CACHE.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "scripts/convert_to_onnx.py", "models/digits.keras", "--output", str(ONNX_CACHE)]
        subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True)
    digits, heavy = PROJECT_ROOT / "models" / "digits.keras", PROJECT_ROOT / "models" / "heavy.keras"
    return {"digits": digits, "heavy": heavy, "digits-onnx": ONNX_CACHE, "spare": ONNX_CACHE}


def add_model(repository: Path, name: str, file: Path) -> Path:
    version = repository / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / f"model{file.suffix}").symlink_to(file)
    return repository / name


def memory_mib(server: LiveServer) -> float:
    """The RSS of the server's master and every process under it."""
    master = psutil.Process(server.process.pid)
    processes = [master, *master.children(recursive=True)]
    return sum(process.memory_info().rss for process in processes if process.is_running()) / 2**20


def counter(url: str, name: str) -> dict[str, float]:
    """A counter's value by its `model` label, from /metrics."""
    text = requests.get(url + "/metrics", timeout=30).text
    return {
        sample.labels.get("model", ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def capacities(files: dict[str, Path], names: list[str], duration_s: float) -> tuple[dict[str, float], dict]:
    """Each model's throughput alone (32 closed-loop clients on a server of it only), and its request body."""
    capacity, bodies = {}, {}
    for name in names:
        with LiveServer({"MODEL_PATH": str(files[name]), "MODEL_NAME": name}) as server:
            bodies[name] = sample_body(server.url, name)
            path = f"/v1/models/{name}:predict"
            run_closed_loop(server.url, bodies[name], 8, 1.0, path=path)  # first requests
            capacity[name] = run_closed_loop(server.url, bodies[name], 32, duration_s, path=path).throughput_rps
    return capacity, bodies


def row(result: LoadResult) -> str:
    return (
        f"{result.throughput_rps:,.0f} | {result.percentile_ms(0.5):.1f} | {result.percentile_ms(0.99):.1f} | "
        f"{result.errors}"
    )


def together(files, capacity, bodies, args) -> str:
    names = ["digits", "heavy", "digits-onnx"]
    rates = {name: args.share * capacity[name] for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch)
        for name in names:
            add_model(repository, name, files[name])
        with LiveServer({"MODEL_REPOSITORY": str(repository)}) as one:
            loads = [Load(f"/v1/models/{name}:predict", bodies[name], rate_rps=rates[name]) for name in names]
            run_together(one.url, loads, 2.0)  # first requests
            one_memory_idle = memory_mib(one)
            shared = run_together(one.url, loads, args.duration)
            one_memory = memory_mib(one)
    servers = [LiveServer({"MODEL_PATH": str(files[name]), "MODEL_NAME": name}) for name in names]
    try:
        for server in servers:
            server.start()
        loads = [
            Load(f"/v1/models/{name}:predict", bodies[name], rate_rps=rates[name], url=server.url)
            for name, server in zip(names, servers, strict=True)
        ]
        run_together(servers[0].url, loads, 2.0)
        three_memory_idle = sum(memory_mib(server) for server in servers)
        apart = run_together(servers[0].url, loads, args.duration)
        three_memory = sum(memory_mib(server) for server in servers)
    finally:
        for server in servers:
            server.stop()
    lines = [
        f"### Three models: one server against three ({args.share:.0%} of each model's capacity at once, "
        f"{args.duration:.0f} s)",
        "",
        "| model | offered req/s | one server: req/s / p50 ms / p99 ms / errors | three servers: req/s / p50 / p99 / "
        "errors |",
        "|---|---|---|---|",
    ]
    for name, one_result, apart_result in zip(names, shared, apart, strict=True):
        lines.append(f"| {name} | {rates[name]:,.0f} | {row(one_result)} | {row(apart_result)} |")
    lines += [
        f"| memory (sum of RSS, MiB) | | {one_memory_idle:,.0f} idle, {one_memory:,.0f} after the load | "
        f"{three_memory_idle:,.0f} idle, {three_memory:,.0f} after the load |",
        "",
        f"One server holds the three models in {one_memory / three_memory:.2f}x the memory of three servers "
        "(one runtime and one master instead of three).",
    ]
    return "\n".join(lines)


def fairness(files, capacity, bodies, args) -> str:
    rate = args.fair_share * capacity["digits"]
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch)
        for name in ("digits", "heavy"):
            add_model(repository, name, files[name])
        with LiveServer({"MODEL_REPOSITORY": str(repository)}) as server:
            steady = Load("/v1/models/digits:predict", bodies["digits"], rate_rps=rate)
            flood = Load("/v1/models/heavy:predict", bodies["heavy"], clients=args.flood)
            run_together(server.url, [steady, flood], 2.0)  # first requests
            (alone,) = run_together(server.url, [steady], args.duration)
            flooded, heavy = run_together(server.url, [steady, flood], args.duration)
    servers = [LiveServer({"MODEL_PATH": str(files[name]), "MODEL_NAME": name}) for name in ("digits", "heavy")]
    try:  # the reference: each model in a server of its own, sharing only the machine's cores
        for each in servers:
            each.start()
        steady_apart = Load("/v1/models/digits:predict", bodies["digits"], rate_rps=rate, url=servers[0].url)
        flood_apart = Load("/v1/models/heavy:predict", bodies["heavy"], clients=args.flood, url=servers[1].url)
        run_together(servers[0].url, [steady_apart, flood_apart], 2.0)
        (alone_apart,) = run_together(servers[0].url, [steady_apart], args.duration)
        flooded_apart, heavy_apart = run_together(servers[0].url, [steady_apart, flood_apart], args.duration)
    finally:
        for each in servers:
            each.stop()
    ratio = flooded.percentile_ms(0.99) / alone.percentile_ms(0.99)
    ratio_apart = flooded_apart.percentile_ms(0.99) / alone_apart.percentile_ms(0.99)
    refused = flooded.statuses.get(503, 0) + alone.statuses.get(503, 0)
    heavy_refused = heavy.statuses.get(503, 0)
    return "\n".join(
        [
            f"### Fairness: digits at {rate:,.0f} req/s ({args.fair_share:.0%} of its capacity), alone and while "
            f"heavy is flooded ({args.flood} connections retrying at once, {args.duration:.0f} s each)",
            "",
            "| digits | req/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|",
            f"| one server, alone | {row(alone)} |",
            f"| one server, heavy flooded | {row(flooded)} |",
            f"| two servers (one model each), alone | {row(alone_apart)} |",
            f"| two servers, heavy flooded | {row(flooded_apart)} |",
            "",
            f"p99 flooded / alone: **{ratio:.2f}x** in one server (target <= 2); digits refused: **{refused}** "
            f"(target 0). heavy meanwhile: {heavy.throughput_rps:,.0f} req/s answered "
            f"({heavy.throughput_rps / capacity['heavy']:.0%} of its capacity alone), {heavy_refused:,} refused. "
            f"With each model in a server of its own (separate processes on the same cores): "
            f"**{ratio_apart:.2f}x**, heavy {heavy_apart.throughput_rps / capacity['heavy']:.0%} of its capacity.",
        ]
    )


def change(files, capacity, bodies, args) -> str:
    names = ["digits", "digits-onnx"]
    rates = {name: args.share * capacity[name] for name in names}

    def config(models: list[str]) -> str:
        return "model_config_list { " + " ".join(f'config {{ name: "{m}" base_path: "{m}" }}' for m in models) + " }"

    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch)
        for name in ("digits", "digits-onnx", "heavy", "spare"):
            add_model(repository, name, files[name])
        config_file = repository / "models.config"
        config_file.write_text(config([*names, "spare"]))
        with LiveServer({"MODEL_CONFIG_FILE": str(config_file), "MODEL_CONFIG_POLL_S": "1"}) as server:
            loads = [Load(f"/v1/models/{name}:predict", bodies[name], rate_rps=rates[name]) for name in names]
            run_together(server.url, loads, 2.0)
            before = run_together(server.url, loads, args.duration)
            written = config_file.with_suffix(".new")
            written.write_text(config([*names, "heavy"]))
            written.rename(config_file)
            started, done_at, during = time.monotonic(), None, [LoadResult("open", rates[name]) for name in names]
            while done_at is None or time.monotonic() < done_at + STEP_S:
                for merged, step in zip(during, run_together(server.url, loads, STEP_S), strict=True):
                    merged.add(step)
                listed = requests.get(server.url + "/v1/models", timeout=30).json()["models"]
                served = {entry["name"] for entry in listed}
                if done_at is None and "heavy" in served and "spare" not in served:
                    done_at = time.monotonic()
                if time.monotonic() - started > 300:
                    raise RuntimeError("the change did not complete within 300 s")
    lines = [
        f"### A model added (heavy) and one removed (spare) under load ({args.share:.0%} of each model's capacity)",
        "",
        "| model | before: req/s / p50 ms / p99 ms / errors | during the change: req/s / p50 / p99 / errors |",
        "|---|---|---|",
    ]
    for name, steady, changing in zip(names, before, during, strict=True):
        lines.append(f"| {name} | {row(steady)} | {row(changing)} |")
    lines += ["", f"The change took {done_at - started:.1f} s from the file's rename to both models' state."]
    return "\n".join(lines)


def on_demand(files, capacity, bodies, args) -> str:
    settings = Settings()
    size_mib = (
        measure_footprint(str(files["digits"]), settings.padded_batch_sizes(), settings.footprint_cache).model_bytes
        / 2**20
    )
    budget_mb = math.floor((args.resident + 0.5) * size_mib)
    weights = [1 / rank**args.zipf for rank in range(1, args.models + 1)]
    rate = args.demand_share * capacity["digits"]
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch)
        names = [f"m{index}" for index in range(args.models)]
        for name in names:
            add_model(repository, name, files["digits"])
        with LiveServer({"MODEL_REPOSITORY": str(repository), "MODEL_MEMORY_MB": str(budget_mb)}) as server:
            loads = [
                Load(f"/v1/models/{name}:predict", bodies["digits"], rate_rps=rate * weight / sum(weights))
                for name, weight in zip(names, weights, strict=True)
            ]
            results = run_together(server.url, loads, args.duration, seed=7)
            worker_mib = max(process.memory_info().rss for process in psutil.Process(server.process.pid).children())
            loads_counted = sum(counter(server.url, "model_server_on_demand_loads_total").values())
            evictions = sum(counter(server.url, "model_server_on_demand_evictions_total").values())
    merged = LoadResult("open", rate)
    for result in results:
        merged.add(result)
    waited = merged.loaded_on_demand_s  # a part of the 200s
    hits = list((Counter(merged.latencies_by_status_s.get(200, [])) - Counter(waited)).elements())
    answered = len(hits) + len(waited)
    return "\n".join(
        [
            f"### On demand: {args.models} copies of the demo model, a budget of {budget_mb} MB for "
            f"{args.resident}.5 of them ({size_mib:.1f} MiB each, measured), Zipf s={args.zipf}, {rate:,.0f} req/s "
            f"in all ({args.demand_share:.0%} of one model's capacity), {args.duration:.0f} s",
            "",
            "| requests | count | p50 ms | p99 ms |",
            "|---|---|---|---|",
            f"| model loaded (hits) | {len(hits):,} | {1000 * percentile(hits, 0.5):.1f} | "
            f"{1000 * percentile(hits, 0.99):.1f} |",
            f"| waited for the model's load | {len(waited):,} | {1000 * percentile(waited, 0.5):.1f} | "
            f"{1000 * percentile(waited, 0.99):.1f} |",
            "",
            f"Hit ratio **{len(hits) / answered:.1%}** of {answered:,} answered; errors {merged.errors} "
            f"({ {str(k): v for k, v in merged.statuses.items() if k != 200} or 'none' }); loads {loads_counted:.0f}, "
            f"evictions {evictions:.0f}. The worker's RSS at the end: {worker_mib / 2**20:,.0f} MiB.",
        ]
    )


PARTS = {"together": together, "fairness": fairness, "change": change, "on-demand": on_demand}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each measured load")
    parser.add_argument("--capacity-duration", type=float, default=8.0, help="seconds of each capacity probe")
    parser.add_argument("--share", type=float, default=0.25, help="offered load, of each model's capacity")
    parser.add_argument("--fair-share", type=float, default=0.3, help="the demo model's load in `fairness`")
    parser.add_argument("--flood", type=int, default=64, help="connections flooding heavy in `fairness`")
    parser.add_argument("--models", type=int, default=10, help="models in `on-demand`")
    parser.add_argument("--resident", type=int, default=4, help="models the budget holds in `on-demand`")
    parser.add_argument("--zipf", type=float, default=1.1, help="the Zipf law's exponent in `on-demand`")
    parser.add_argument("--demand-share", type=float, default=0.02, help="the load in `on-demand`, of one's capacity")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    parts = list(PARTS) if args.part == "all" else [args.part]
    files = prepare()
    capacity, bodies = capacities(files, ["digits", "heavy", "digits-onnx"], args.capacity_duration)
    sections = [
        f"Machine: {machine_description()}. Capacity alone (32 clients, closed loop): "
        + ", ".join(f"{name} {rps:,.0f} req/s" for name, rps in capacity.items()),
        *(PARTS[part](files, capacity, bodies, args) for part in parts),
    ]
    publish("\n\n".join(sections), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
