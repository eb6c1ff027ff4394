"""How close the server comes to what the hardware can do, measured in one run.

    python scripts/bench.py --model models/heavy.keras --duration 15

1. The in-process limit (scripts/in_process_limit.py): the model's own compiled forward pass,
   no HTTP, in a child process with the server's thread settings: latency at batch 1 and instances per second
   at MAX_BATCH_SIZE, one pass at a time, and also with two passes side by side (what the
   server runs under load; CONCURRENT_BATCHES). A shared machine's speed drifts by 20% within minutes, so the child
   measures it again after every load level, while the server idles, and each row is
   compared with the mean of the measurements just before and just after it.
2. Our server (real Gunicorn) under a closed-loop load at each concurrency (wrk when it is
   installed, else the Python load generator) and an open-loop load at each Poisson
   arrival rate (the Python load generator): throughput, p50, p99, errors, mean batch size,
   and the CPU the load generator and the server used.
3. The baseline, run the same way: Flask under Gunicorn, one sync worker, `model.predict`
   per request (scripts/baseline_server.py).
4. A markdown table: throughput as a fraction of the in-process limit, latency as a
   multiple of the in-process batch-1 latency.

`--servers "fixed 1 ms:BATCH_TIMEOUT_MS=1" "adaptive:BATCH_POLICY=adaptive"` measures several
configurations of our server in one run instead of one; `--compare-to adaptive` then adds a
table that sets that one against the best of the others at each closed-loop level (mean
latency from Little's law: clients / throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from scripts.in_process_limit import InProcessLimit, InProcessProbe, add_model_arguments
from scripts.launcher import LiveServer
from scripts.loadgen import LoadResult, run_closed_loop, run_open_loop
from scripts.predict_requests import sample_body

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_predict.lua"
BASELINE_COMMAND = (
    "-m", "gunicorn", "-w", "1", "-k", "sync", "-b", "127.0.0.1:{port}", "--timeout", "600",
    "--chdir", "scripts", "baseline_server:app",
)  # fmt: skip


@dataclass(frozen=True)
class Measurement:
    server: str
    load: LoadResult
    server_cpu_percent: float  # percent of one core, summed over the server's processes
    limit: InProcessLimit  # measured just before and just after this load


def run_wrk(url: str, body: bytes | list[bytes], concurrency: int, duration_s: float) -> LoadResult:
    """Closed loop with wrk: `concurrency` connections, each sending its next request on the last answer.

    With a list of bodies, they are sent in turn, none twice until the list runs out.
    """
    threads = min(2, concurrency)
    with tempfile.NamedTemporaryFile(suffix=".json") as body_file:
        body_file.write(body if isinstance(body, bytes) else b"\n".join(body))
        body_file.flush()
        command = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{duration_s:g}s"]
        command += ["--timeout", "10s", "-s", str(WRK_SCRIPT), f"{url}/predict", "--", body_file.name]
        if not isinstance(body, bytes):
            command += ["lines", str(threads)]
        before = resource_usage_children()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        cpu_s = resource_usage_children() - before
    report = json.loads(done.stdout.strip().splitlines()[-1])
    result = LoadResult("closed", concurrency, duration_s=report["duration_us"] / 1e6, client_cpu_s=cpu_s)
    counts = {200: report["ok"], 503: report["refused"], 500: report["failed"]}  # 500: any other status
    result.statuses = {status: count for status, count in counts.items() if count or status == 200}
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


def wait_until_idle(server: LiveServer, deadline_s: float = 60.0) -> None:
    """Wait for the server to work off what the load left queued, so the probe measures an idle machine."""
    deadline = time.monotonic() + deadline_s
    used = server_cpu_seconds(server)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        used, previous = server_cpu_seconds(server), used
        if used - previous < 0.05:  # under 10% of one core
            return


def measure_server(
    name: str, server: LiveServer, probe: InProcessProbe, body: bytes, args, use_wrk: bool, progress
) -> list[Measurement]:
    measurements = []
    run_closed_loop(server.url, body, max(args.concurrency, default=32), 2.0)  # settle thread pools and caches
    before = probe.measure()
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
        wait_until_idle(server)
        after = probe.measure()
        measurements.append(Measurement(name, result, server_cpu, InProcessLimit.mean(before, after)))
        before = after
        progress(
            f"  {json.dumps(result.summary())}; in-process batch {after.max_batch_size}: {after.max_batch_ms:.1f} ms"
        )
    return measurements


def format_table(measurements: list[Measurement]) -> str:
    """Each row's ratios use the in-process limit measured around that row; the header gives their range."""
    limits = [m.limit for m in measurements]

    def span(figures, form: str) -> str:
        return f"{min(figures):{form}}-{max(figures):{form}}"

    lines = [
        f"In-process limit, measured around each row: batch 1 takes {span([x.batch1_ms for x in limits], '.2f')} ms; "
        f"batch {limits[0].max_batch_size} takes {span([x.max_batch_ms for x in limits], '.1f')} ms = "
        f"{span([x.throughput_rps for x in limits], '.0f')} instances/s one batch at a time, "
        f"{span([x.two_at_once_rps for x in limits], '.0f')} instances/s with two batches side by side.",
        "",
        "| server | load | throughput (req/s) | in-process limit (inst/s) | of the limit | of two side by side | "
        "of one batch of all clients | p50 (ms) | batch-1 (ms) | p50 / batch-1 | p99 (ms) | p99 / batch-1 | errors | "
        "mean batch | server CPU | load-generator CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        load, limit = m.load, m.limit
        level = f"closed, {load.level:g} clients" if load.mode == "closed" else f"open, {load.level:g} req/s"
        p50, p99 = load.percentile_ms(0.5), load.percentile_ms(0.99)
        all_at_once = limit.batch_of_rps(int(load.level)) if load.mode == "closed" else None
        of_all_at_once = f"{load.throughput_rps / all_at_once:.0%}" if all_at_once else "-"
        lines.append(
            f"| {m.server} | {level} | {load.throughput_rps:.1f} | {limit.throughput_rps:.0f} | "
            f"{load.throughput_rps / limit.throughput_rps:.0%} | {load.throughput_rps / limit.two_at_once_rps:.0%} | "
            f"{of_all_at_once} | {p50:.1f} | {limit.batch1_ms:.1f} | "
            f"{p50 / limit.batch1_ms:.2f}x | {p99:.1f} | {p99 / limit.batch1_ms:.2f}x | {load.errors} | "
            f"{load.mean_batch_size:.1f} | {m.server_cpu_percent:.0f}% | {load.client_cpu_percent:.0f}% |"
        )
    return "\n".join(lines)


def measurements_json(model_path: str, measurements: list[Measurement]) -> dict:
    """Every row as plain data: the model, the server, the load's summary and the in-process limit around it."""
    return {
        "model": model_path,
        "machine": machine_description(),
        "rows": [
            {
                "server": m.server,
                **m.load.summary(),
                "server_cpu_percent": round(m.server_cpu_percent),
                "limit": vars(m.limit),
            }
            for m in measurements
        ],
    }


def parse_servers(specs: list[str]) -> list[tuple[str, dict[str, str]]]:
    """`LABEL:NAME=VALUE,NAME=VALUE` -> (label, env) for each configuration of our server."""
    servers = []
    for spec in specs:
        label, _, assignments = spec.partition(":")
        servers.append((label, dict(pair.split("=", 1) for pair in assignments.split(",") if pair)))
    return servers


def format_comparison(measurements: list[Measurement], label: str) -> str:
    """At each closed-loop level: `label` against the best other configuration of ours, by latency and throughput."""
    lines = [
        f"| clients | {label}: mean latency (ms) | best other | its mean latency (ms) | latency ratio | "
        f"{label}: throughput (req/s) | best other | its throughput (req/s) | throughput ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    closed = [m for m in measurements if m.load.mode == "closed" and m.server != "baseline"]
    for level in sorted({m.load.level for m in closed}):
        rows = {m.server: m.load for m in closed if m.load.level == level}
        if label not in rows or len(rows) < 2:
            continue
        ours = rows.pop(label)
        mean_ms = {name: 1000 * level / load.throughput_rps for name, load in rows.items()}
        ours_ms = 1000 * level / ours.throughput_rps
        fastest = min(mean_ms, key=mean_ms.get)
        busiest = max(rows, key=lambda name: rows[name].throughput_rps)
        lines.append(
            f"| {level:g} | {ours_ms:.1f} | {fastest} | {mean_ms[fastest]:.1f} | {ours_ms / mean_ms[fastest]:.2f} | "
            f"{ours.throughput_rps:.1f} | {busiest} | {rows[busiest].throughput_rps:.1f} | "
            f"{ours.throughput_rps / rows[busiest].throughput_rps:.2f} |"
        )
    return "\n".join(lines)


def publish(report: str, markdown: Path | None) -> None:
    """Print a benchmark's report, and write it to `markdown` too when given (the scripts' `--markdown`)."""
    print(report)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(report + "\n")


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
    add_model_arguments(parser)
    parser.add_argument("--rates", type=float, nargs="*", default=[50, 300, 900], help="open-loop requests/s")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load level")
    parser.add_argument("--env", nargs="*", default=[], help="extra server settings, NAME=VALUE")
    parser.add_argument(
        "--servers", nargs="*", default=["ours:"], help="configurations of ours to measure, LABEL:NAME=VALUE,..."
    )
    parser.add_argument("--compare-to", help="a --servers label to set against the best of the others")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline server")
    parser.add_argument("--python-client", action="store_true", help="use the Python load generator even with wrk")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--json", type=Path, help="also write every row as JSON (scripts/capacity.py reads it)")
    args = parser.parse_args()

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    use_wrk = shutil.which("wrk") is not None and not args.python_client
    progress(f"loading {args.model} in a child process for the in-process limit ...")
    probe = InProcessProbe(args.model, args.max_batch_size, args.intra_op_threads, args.concurrency)
    model_name = Path(args.model.rstrip("/")).stem
    env = {
        "MODEL_PATH": args.model,
        "MAX_BATCH_SIZE": str(args.max_batch_size),
        **dict(p.split("=", 1) for p in args.env),
    }
    measurements = []
    with probe:
        for label, server_env in parse_servers(args.servers):
            with LiveServer({**env, **server_env}) as server:
                body = sample_body(server.url, model_name)
                measurements += measure_server(label, server, probe, body, args, use_wrk, progress)
        if not args.no_baseline:
            with LiveServer({"MODEL_PATH": os.path.abspath(args.model)}, command=BASELINE_COMMAND) as baseline:
                measurements += measure_server("baseline", baseline, probe, body, args, use_wrk, progress)
    closed_client = "wrk" if use_wrk else "the Python load generator"
    table = format_table(measurements)
    if args.compare_to:
        table += "\n\n" + format_comparison(measurements, args.compare_to)
    header = (
        f"Model `{args.model}`, MAX_BATCH_SIZE={args.max_batch_size}, {args.duration:g} s per level; machine: "
        f"{machine_description()}; closed loop by {closed_client}, open loop (Poisson) by the Python load generator."
    )
    publish(header + "\n\n" + table, args.markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(measurements_json(args.model, measurements), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
