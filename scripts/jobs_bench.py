"""What a background job does to online requests, and how fast one runs alone, in one run.

    python -m scripts.jobs_bench --model models/heavy.keras --duration 10

Against one server with default settings:
1. The model's in-process limit (scripts/in_process_limit.py), before and after the rest.
2. Online alone: single-instance requests at half load (half the throughput 32 clients get in a
   closed loop; an open loop), and the same again while a job of `--big-job` instances runs
   (measured once it is running, so its upload is not counted); p50 and p99 of both, and the ratios.
   The job is then cancelled.
3. A job of `--job` instances with no online traffic: its instances/s from started_at to
   finished_at, against the in-process limit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

from scripts.bench import machine_description, publish
from scripts.in_process_limit import InProcessLimit, InProcessProbe, add_model_arguments
from scripts.launcher import LiveServer
from scripts.loadgen import run_closed_loop, run_open_loop
from scripts.predict_requests import sample_body

DEADLINE_S = 1800


def call(method: str, url: str, body: bytes | None = None) -> dict:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.load(answer)


def submit(url: str, model_name: str, body: bytes) -> str:
    return call("POST", f"{url}/v1/models/{model_name}/jobs", body)["id"]


def wait_for(url: str, job_id: str, condition) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job = call("GET", f"{url}/v1/jobs/{job_id}")
        if condition(job):
            return job
        time.sleep(0.1)
    raise RuntimeError(f"job {job_id} did not get there in {DEADLINE_S} s: {job}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per online measurement")
    parser.add_argument("--job", type=int, default=5000, help="instances of the job run alone")
    parser.add_argument("--big-job", type=int, default=20_000, help="instances of the job run beside online traffic")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    name = Path(args.model.rstrip("/")).stem
    settings = {"MODEL_PATH": args.model, "MAX_JOB_BODY_BYTES": str(1 << 30)}
    with (
        InProcessProbe(args.model, args.max_batch_size, args.intra_op_threads, [args.max_batch_size]) as probe,
        LiveServer(settings) as server,
    ):
        before = probe.measure()
        single = sample_body(server.url, name)
        half_load = run_closed_loop(server.url, single, 32, args.duration).throughput_rps / 2
        alone = run_open_loop(server.url, single, half_load, args.duration)
        big = submit(server.url, name, sample_body(server.url, name, args.big_job))
        wait_for(server.url, big, lambda job: job["state"] == "running")
        beside = run_open_loop(server.url, single, half_load, args.duration)
        big_job = call("DELETE", f"{server.url}/v1/jobs/{big}")
        job = submit(server.url, name, sample_body(server.url, name, args.job))
        done = wait_for(server.url, job, lambda job: job["state"] in ("done", "failed", "cancelled"))
        if done["state"] != "done":
            raise RuntimeError(f"the job ended {done['state']}: {done['error']}")
        limit = InProcessLimit.mean(before, probe.measure())
    job_rps = args.job / (done["finished_at"] - done["started_at"])
    online = (
        f"| single requests at {half_load:.0f} req/s | answered | errors | p50 (ms) | p99 (ms) |\n"
        "|---|---|---|---|---|\n"
        f"| alone | {alone.ok} | {alone.errors} | {alone.percentile_ms(0.5):.1f} | {alone.percentile_ms(0.99):.1f} |\n"
        f"| beside a job of {args.big_job} instances | {beside.ok} | {beside.errors} | "
        f"{beside.percentile_ms(0.5):.1f} | {beside.percentile_ms(0.99):.1f} |\n\n"
        f"beside / alone: p50 **{beside.percentile_ms(0.5) / alone.percentile_ms(0.5):.2f}**, "
        f"p99 **{beside.percentile_ms(0.99) / alone.percentile_ms(0.99):.2f}**; the job had done "
        f"{big_job['progress']['done']} instances when it was cancelled."
    )
    offline = (
        "| measure | instances/s | against the in-process limit |\n|---|---|---|\n"
        f"| in-process limit (batches of {limit.max_batch_size}) | {limit.throughput_rps:.1f} | 1.00 |\n"
        f"| a job of {args.job} instances, no online traffic | {job_rps:.1f} | "
        f"**{job_rps / limit.throughput_rps:.2f}** |"
    )
    report = f"Model `{args.model}`, default settings; machine: {machine_description()}.\n\n{online}\n\n{offline}"
    publish(report, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
