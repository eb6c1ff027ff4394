"""A version switch under load, measured: requests failed, p99 against steady state, answers that change.

    python scripts/version_switch_bench.py     # models/heavy.keras, and the same network with other weights

The server (default settings) serves a MODEL_BASE_PATH whose version 1 is `--model`; `--other`
(built with another seed when missing) answers differently. In each of `--rounds` rounds,
`--clients` closed-loop clients of one instance each (the Python load generator, cycling
through 64 inputs) run:
1. steady: `--duration` s, every answer checked against the serving version's predictions;
2. switch: the next version (the other weights) is moved into the base path, and the load goes
   on in 2 s steps until every worker serves it and has released the old one (by the
   `model_server_model_info` gauge), plus one step;
3. the next round's steady state checks every answer against the new version's predictions.
Reported per round: failed requests, p99 while switching against steady state's, and the
switch's length. Versions are symbolic links to the two model files, so nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from scripts.bench import machine_description, publish
from scripts.launcher import PROJECT_ROOT, LiveServer
from scripts.loadgen import LoadResult, Workload, percentile, run_closed_loop
from scripts.predict_requests import sample_instance

STEP_S = 2.0
INPUTS = 64


def build_other(model: str, other: str) -> None:
    """The benchmark model's network with other random weights: a version that answers differently."""
    command = [sys.executable, "scripts/build_demo_model.py", "--heavy", "--seed", "1", "--output", other]
    subprocess.run(command, cwd=PROJECT_ROOT, check=True)


def workload_of(url: str, name: str, inputs: list) -> Workload:
    """One body per input, each expecting the predictions the version serving now gives it."""
    answer = requests.post(f"{url}/v1/models/{name}:predict", json={"instances": inputs}, timeout=120)
    answer.raise_for_status()
    return Workload.from_answers({"instances": inputs, "predictions": answer.json()["predictions"]})


def serves_only(url: str, name: str, version: int) -> bool:
    """Every live worker serves `version` and none still holds another (`model_server_model_info` is livemax)."""
    text = requests.get(url + "/metrics", timeout=30).text
    served = {
        sample.labels["version"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "model_server_model_info" and sample.labels.get("name") == name
    }
    return served.get(str(version)) == 1 and all(v == 0 for k, v in served.items() if k != str(version))


def switch_under_load(url: str, name: str, workload: Workload, clients: int, publish_version, version: int):
    """Load in steps while `publish_version()` moves the version in; the merged result and the seconds it took."""
    merged = LoadResult("closed", clients)
    started = time.monotonic()
    publish_version()
    done_at = None
    while done_at is None or time.monotonic() < done_at + STEP_S:
        step = run_closed_loop(url, Workload(workload.bodies), clients, STEP_S, path=f"/v1/models/{name}:predict")
        merged.add(step)
        if done_at is None and serves_only(url, name, version):
            done_at = time.monotonic()
        if time.monotonic() - started > 600:
            raise RuntimeError(f"version {version} was not served by every worker within 600 s")
    return merged, done_at - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/heavy.keras")
    parser.add_argument("--other", default="models/heavy-seed1.keras", help="the next version's model file")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of steady load per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of the server")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    if not os.path.exists(args.other):
        build_other(args.model, args.other)
    files = [os.path.abspath(args.model), os.path.abspath(args.other)]
    suffix = Path(args.model).suffix
    rng = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "model"

        def add_version(number: int) -> None:
            staging = base / f"{number}.partial"
            staging.mkdir(parents=True)
            os.symlink(files[(number - 1) % 2], staging / f"model{suffix}")
            os.rename(staging, base / str(number))

        add_version(1)
        settings = {"MODEL_BASE_PATH": str(base), **dict(setting.split("=", 1) for setting in args.set)}
        with LiveServer(settings) as server:
            metadata = requests.get(f"{server.url}/v1/models/model/metadata", timeout=30).json()
            inputs = [sample_instance(metadata, rng) for _ in range(INPUTS)]
            run_closed_loop(server.url, json.dumps({"instances": inputs[:1]}).encode(), 4, 1.0)  # first requests
            for round_index in range(args.rounds):
                version = round_index + 1
                workload = workload_of(server.url, "model", inputs)
                path = "/v1/models/model:predict"
                steady = run_closed_loop(server.url, workload, args.clients, args.duration, path=path)
                switch, switch_s = switch_under_load(
                    server.url, "model", workload, args.clients, lambda v=version + 1: add_version(v), version + 1
                )
                after = run_closed_loop(server.url, workload, args.clients, 2.0, path=path)
                rows.append(
                    {
                        "round": version,
                        "steady_p99_ms": steady.percentile_ms(0.99),
                        "steady_p50_ms": steady.percentile_ms(0.5),
                        "steady_rps": steady.throughput_rps,
                        "steady_errors": steady.errors,
                        "steady_wrong": steady.wrong_answers,
                        "switch_p99_ms": 1000 * percentile(switch.latencies_s, 0.99),
                        "switch_p50_ms": 1000 * percentile(switch.latencies_s, 0.5),
                        "switch_rps": switch.throughput_rps,
                        "switch_errors": switch.errors,
                        "switch_s": switch_s,
                        "answers_changed": after.wrong_answers == after.ok and after.ok > 0,
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = [
        "| round | steady req/s | steady p50 / p99 ms | switching req/s | switching p50 / p99 ms | p99 ratio | "
        "switch s | failed (steady, switching) | steady answers as expected | answers changed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['round']} | {row['steady_rps']:.0f} | {row['steady_p50_ms']:.0f} / {row['steady_p99_ms']:.0f} | "
            f"{row['switch_rps']:.0f} | {row['switch_p50_ms']:.0f} / {row['switch_p99_ms']:.0f} | "
            f"**{row['switch_p99_ms'] / row['steady_p99_ms']:.2f}** | {row['switch_s']:.1f} | "
            f"{row['steady_errors']}, {row['switch_errors']} | {row['steady_wrong'] == 0} | {row['answers_changed']} |"
        )
    ratio = statistics.median(row["switch_p99_ms"] / row["steady_p99_ms"] for row in rows)
    settings = " ".join(args.set) or "default settings"
    report = (
        f"Model `{args.model}`, next versions alternating with `{args.other}`; {settings}; {args.clients} "
        f"closed-loop clients; machine: {machine_description()}.\n\n"
        + "\n".join(lines)
        + f"\n\nMedian p99 ratio, switching / steady: **{ratio:.2f}**."
    )
    publish(report, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
