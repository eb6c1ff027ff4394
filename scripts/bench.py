"""How close the server comes to what the hardware can do, measured in one run.

    python scripts/bench.py --model models/heavy.keras --duration 15

1. The in-process limit: the model's own compiled forward pass, no HTTP, in a child
   process with the server's thread settings: latency at batch 1 and instances per second
   at MAX_BATCH_SIZE.
2. Our server (real Gunicorn) under a closed-loop load at each concurrency (wrk when it is
   installed, else the Python load generator) and an open-loop load at each Poisson
   arrival rate (the Python load generator): throughput, p50, p99, errors, mean batch size,
   and the CPU the load generator and the server used.
3. The baseline, run the same way: Flask under Gunicorn, one sync worker, `model.predict`
   per request (scripts/baseline_server.py).
4. A markdown table: throughput as a fraction of the in-process limit, latency as a
   multiple of the in-process batch-1 latency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadgen import LoadResult, run_closed_loop, run_open_loop, sample_body

from service.launcher import PROJECT_ROOT, LiveServer

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_predict.lua"
BASELINE_COMMAND = (
    "-m", "gunicorn", "-w", "1", "-k", "sync", "-b", "127.0.0.1:{port}", "--timeout", "600",
    "--chdir", "scripts", "baseline_server:app",
)  # fmt: skip


@dataclass(frozen=True)
class InProcessLimit:
    batch1_ms: float
    max_batch_size: int
    max_batch_ms: float

    @property
    def throughput_rps(self) -> float:
        return self.max_batch_size / (self.max_batch_ms / 1000)


@dataclass(frozen=True)
class Measurement:
    server: str
    load: LoadResult
    server_cpu_percent: float  # percent of one core, summed over the server's processes


def measure_in_process(model_path: str, max_batch_size: int, intra_op_threads: int, repeats: int) -> InProcessLimit:
    """Runs in a child process: TF is configured as a worker would be, then timed without HTTP."""
    import numpy as np

    from service.gpu import configure_tensorflow
    from service.model import load_served_model

    configure_tensorflow(intra_op_threads, 1, None)
    model = load_served_model(model_path, "bench", 1, (1, max_batch_size))
    model.warm_up()

    def median_ms(size: int) -> float:
        rng = np.random.default_rng(0)
        batch = {
            info.name: rng.random((size, *(dim or 1 for dim in info.instance_shape))).astype(info.dtype)
            for info in model.signature.inputs
        }
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.run(batch)
            timings.append(time.perf_counter() - started)
        return 1000 * statistics.median(timings)

    return InProcessLimit(median_ms(1), max_batch_size, median_ms(max_batch_size))


def in_process_limit(model_path: str, max_batch_size: int, intra_op_threads: int) -> InProcessLimit:
    command = [sys.executable, __file__, "in-process", "--model", model_path, "--max-batch-size", str(max_batch_size)]
    command += ["--intra-op-threads", str(intra_op_threads)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=PROJECT_ROOT)
    return InProcessLimit(**json.loads(done.stdout.strip().splitlines()[-1]))


def run_wrk(url: str, body: bytes, concurrency: int, duration_s: float) -> LoadResult:
    """Closed loop with wrk: `concurrency` connections, each sending its next request on the last answer."""
    with tempfile.NamedTemporaryFile(suffix=".json") as body_file:
        body_file.write(body)
        body_file.flush()
        command = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{duration_s:g}s"]
        command += ["--timeout", "10s", "-s", str(WRK_SCRIPT), f"{url}/predict", "--", body_file.name]
        before = resource_usage_children()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        cpu_s = resource_usage_children() - before
    report = json.loads(done.stdout.strip().splitlines()[-1])
    result = LoadResult("closed", concurrency, duration_s=report["duration_us"] / 1e6, client_cpu_s=cpu_s)
    result.statuses = {200: report["ok"], 500: report["failed"]} if report["failed"] else {200: report["ok"]}
    result.connection_errors = report["socket_errors"]
    result.reported_percentiles_ms = {0.5: report["p50_us"] / 1000, 0.99: report["p99_us"] / 1000}
    if report["batch_count"]:
        result.batch_sizes = [report["batch_sum"] / report["batch_count"]]
    return result


def resource_usage_children() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_cpu_seconds(server: LiveServer) -> float:
    master = psutil.Process(server.process.pid)
    total = 0.0
    for process in [master, *master.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure_server(name: str, server: LiveServer, body: bytes, args, use_wrk: bool, progress) -> list[Measurement]:
    measurements = []
    run_closed_loop(server.url, body, max(args.concurrency), 2.0)  # settle thread pools and caches
    loads = [("closed", c) for c in args.concurrency] + [("open", r) for r in args.rates]
    for mode, level in loads:
        progress(f"{name}: {mode} loop at {level:g} {'clients' if mode == 'closed' else 'requests/s'}")
        cpu_before = server_cpu_seconds(server)
        if mode == "closed":
            if use_wrk:
                result = run_wrk(server.url, body, int(level), args.duration)
            else:
                result = run_closed_loop(server.url, body, int(level), args.duration)
        else:
            result = run_open_loop(server.url, body, level, args.duration)
        server_cpu = 100 * (server_cpu_seconds(server) - cpu_before) / result.duration_s
        measurements.append(Measurement(name, result, server_cpu))
        progress(f"  {json.dumps(result.summary())}")
    return measurements


def format_table(limit: InProcessLimit, measurements: list[Measurement]) -> str:
    lines = [
        f"In-process limit: batch 1 takes {limit.batch1_ms:.2f} ms; batch {limit.max_batch_size} takes "
        f"{limit.max_batch_ms:.1f} ms = {limit.throughput_rps:.0f} instances/s.",
        "",
        "| server | load | throughput (req/s) | of in-process limit | p50 (ms) | p50 / batch-1 | p99 (ms) | "
        "p99 / batch-1 | errors | mean batch | server CPU | load-generator CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        load = m.load
        level = f"closed, {load.level:g} clients" if load.mode == "closed" else f"open, {load.level:g} req/s"
        p50, p99 = load.percentile_ms(0.5), load.percentile_ms(0.99)
        lines.append(
            f"| {m.server} | {level} | {load.throughput_rps:.1f} | {load.throughput_rps / limit.throughput_rps:.0%} | "
            f"{p50:.1f} | {p50 / limit.batch1_ms:.2f}x | {p99:.1f} | {p99 / limit.batch1_ms:.2f}x | {load.errors} | "
            f"{load.mean_batch_size:.1f} | {m.server_cpu_percent:.0f}% | {load.client_cpu_percent:.0f}% |"
        )
    return "\n".join(lines)


def machine_description() -> str:
    model_name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = psutil.virtual_memory().total / 1024**3
    return f"{len(os.sched_getaffinity(0))} cores ({model_name}), {memory_gib:.0f} GiB RAM, no GPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "in-process"])
    parser.add_argument("--model", default="models/heavy.keras")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--intra-op-threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32, 128])
    parser.add_argument("--rates", type=float, nargs="*", default=[50, 300, 900], help="open-loop requests/s")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load level")
    parser.add_argument("--env", nargs="*", default=[], help="extra server settings, NAME=VALUE")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline server")
    parser.add_argument("--python-client", action="store_true", help="use the Python load generator even with wrk")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    if args.mode == "in-process":
        limit = measure_in_process(args.model, args.max_batch_size, args.intra_op_threads, repeats=30)
        print(json.dumps(limit.__dict__))
        return 0

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    use_wrk = shutil.which("wrk") is not None and not args.python_client
    progress(f"in-process limit of {args.model} ...")
    limit = in_process_limit(args.model, args.max_batch_size, args.intra_op_threads)
    progress(f"  batch 1: {limit.batch1_ms:.2f} ms; batch {limit.max_batch_size}: {limit.throughput_rps:.0f}/s")
    model_name = Path(args.model.rstrip("/")).stem
    env = {
        "MODEL_PATH": args.model,
        "MAX_BATCH_SIZE": str(args.max_batch_size),
        **dict(p.split("=", 1) for p in args.env),
    }
    measurements = []
    with LiveServer(env) as server:
        body = sample_body(server.url, model_name)
        measurements += measure_server("ours", server, body, args, use_wrk, progress)
    if not args.no_baseline:
        with LiveServer({"MODEL_PATH": os.path.abspath(args.model)}, command=BASELINE_COMMAND) as baseline:
            measurements += measure_server("baseline", baseline, body, args, use_wrk, progress)
    closed_client = "wrk" if use_wrk else "the Python load generator"
    table = format_table(limit, measurements)
    header = (
        f"Model `{args.model}`, MAX_BATCH_SIZE={args.max_batch_size}, {args.duration:g} s per level; machine: "
        f"{machine_description()}; closed loop by {closed_client}, open loop (Poisson) by the Python load generator."
    )
    print(header + "\n\n" + table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(header + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
