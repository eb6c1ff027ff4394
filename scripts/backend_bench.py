"""TensorFlow against ONNX Runtime on the same models, in one run: in-process and through the server.

    python scripts/backend_bench.py --model models/heavy.keras --model models/digits.keras

For each model, with its ONNX conversion (`<model>.onnx`, written by scripts/convert_to_onnx.py
when missing):
1. In-process, in a child process per backend with the same threads (scripts/in_process_limit.py):
   the median batch-1 latency and the instances per second of one batch of 32 after another.
2. Through the server, default settings, both servers up side by side: closed loops of 1, 32
   and 128 clients of one instance each (wrk, else the Python load generator): throughput and p50.
Every measurement is taken in `--rounds` rounds, the backends' order reversed every other round;
the report gives medians and the median of the per-round ratios ONNX / TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from scripts.bench import machine_description, publish, run_wrk
from scripts.in_process_limit import InProcessProbe
from scripts.launcher import PROJECT_ROOT, LiveServer
from scripts.loadgen import run_closed_loop
from scripts.predict_requests import sample_body

BACKENDS = ("tensorflow", "onnx")
BATCH_SIZE = 32


def onnx_path_for(model: str) -> str:
    """The model's ONNX conversion beside it, converted (and checked) first if it is missing."""
    path = str(Path(model.rstrip("/")).with_suffix(".onnx"))
    if not os.path.exists(path):
        subprocess.run(
            [sys.executable, "scripts/convert_to_onnx.py", model, "--output", path], cwd=PROJECT_ROOT, check=True
        )
    return path


def ratio_row(label: str, runs: dict[str, list[float]], digits: int) -> str:
    """| label | TF median | ONNX median | median of the per-round ratios |"""
    ratios = [onnx / tf for tf, onnx in zip(runs["tensorflow"], runs["onnx"], strict=True)]
    medians = [statistics.median(runs[backend]) for backend in BACKENDS]
    return f"| {label} | {medians[0]:.{digits}f} | {medians[1]:.{digits}f} | **{statistics.median(ratios):.2f}** |"


def in_process_rows(paths: dict[str, str], rounds: int, threads: int) -> list[str]:
    batch1_ms: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
    batch_rps: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
    probes = {backend: InProcessProbe(paths[backend], BATCH_SIZE, threads, []) for backend in BACKENDS}
    try:
        for round_index in range(rounds):
            for backend in BACKENDS if round_index % 2 == 0 else tuple(reversed(BACKENDS)):
                limit = probes[backend].measure()
                batch1_ms[backend].append(limit.batch1_ms)
                batch_rps[backend].append(limit.throughput_rps)
    finally:
        for probe in probes.values():
            probe.close()
    return [
        ratio_row("in-process batch-1 latency (ms)", batch1_ms, 2),
        ratio_row(f"in-process batch-{BATCH_SIZE} throughput (instances/s)", batch_rps, 0),
    ]


def server_rows(paths: dict[str, str], levels: list[int], rounds: int, duration_s: float, use_wrk: bool) -> list[str]:
    throughput = {level: {backend: [] for backend in BACKENDS} for level in levels}
    p50_ms = {level: {backend: [] for backend in BACKENDS} for level in levels}
    servers = {backend: LiveServer({"MODEL_PATH": path}).start() for backend, path in paths.items()}
    try:
        name = Path(paths["tensorflow"].rstrip("/")).stem
        body = sample_body(servers["tensorflow"].url, name)

        def run(backend: str, clients: int, seconds: float):
            url = servers[backend].url
            return run_wrk(url, body, clients, seconds) if use_wrk else run_closed_loop(url, body, clients, seconds)

        for backend in BACKENDS:  # every server's first requests, outside the measurements
            run(backend, 4, 1.0)
        for round_index in range(rounds):
            for level in levels:
                for backend in BACKENDS if round_index % 2 == 0 else tuple(reversed(BACKENDS)):
                    load = run(backend, level, duration_s)
                    if load.errors or not load.ok:
                        raise RuntimeError(
                            f"{backend}, {level} clients: {load.errors} errors of {load.ok + load.errors}"
                        )
                    throughput[level][backend].append(load.throughput_rps)
                    p50_ms[level][backend].append(load.percentile_ms(0.5))
                    print(f"{backend}, {level} clients, round {round_index + 1}: {load.throughput_rps:.0f} req/s, "
                          f"p50 {load.percentile_ms(0.5):.1f} ms", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for level in levels:
        rows.append(ratio_row(f"server, {level} clients: throughput (req/s)", throughput[level], 0))
        rows.append(ratio_row(f"server, {level} clients: p50 (ms)", p50_ms[level], 1))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="Keras model or SavedModel (repeatable); default heavy, demo")
    parser.add_argument("--clients", default="1,32,128", help="closed-loop clients, comma-separated")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per server run")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each backend per row")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="in-process threads")
    parser.add_argument("--python-client", action="store_true", help="use the Python load generator even with wrk")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    levels = [int(level) for level in args.clients.split(",")]
    sections = []
    for model in args.model or ["models/heavy.keras", "models/digits.keras"]:
        paths = {"tensorflow": model, "onnx": onnx_path_for(model)}
        rows = in_process_rows(paths, args.rounds, args.threads)
        rows += server_rows(paths, levels, args.rounds, args.duration, use_wrk)
        sections.append(
            f"Model `{model}` (ONNX: `{paths['onnx']}`):\n\n| measurement | TensorFlow | ONNX Runtime | ONNX / TF |\n"
            "|---|---|---|---|\n" + "\n".join(rows)
        )
    report = (
        f"Machine: {machine_description()}. In-process: {args.threads} threads, medians of {args.rounds} rounds. "
        f"Server: default settings, closed loops by {'wrk' if use_wrk else 'the Python load generator'}, "
        f"{args.duration:g} s a run, {args.rounds} rounds, backends in alternating order; medians, and the median "
        "of per-round ratios.\n\n" + "\n\n".join(sections)
    )
    publish(report, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
