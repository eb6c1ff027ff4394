"""Each load tool end to end against a live demo-model server: a few seconds, a tiny grid."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from scripts.launcher import PROJECT_ROOT

pytestmark = pytest.mark.integration


def run(*command: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, *command], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def one_worker_server(launch_server, demo_onnx_path):
    server = launch_server(MODEL_PATH=str(demo_onnx_path), WORKERS="1", BATCH_TIMEOUT_MS="2")
    yield server
    server.stop()


def test_checkout_locustfile_scans_without_failures(one_worker_server, tmp_path):
    prefix, report = tmp_path / "checkout", tmp_path / "batches.json"
    run(
        "-m", "locust", "-f", "locustfiles/checkout.py", "--headless", "-u", "10", "-r", "10", "-t", "4s",
        "--host", one_worker_server.url, "--csv", str(prefix), "--only-summary", "--batch-report", str(report),
    )  # fmt: skip
    with open(f"{prefix}_stats.csv", newline="") as stream:
        aggregated = next(row for row in csv.DictReader(stream) if row["Name"] == "Aggregated")
    assert int(aggregated["Request Count"]) >= 10  # ten machines scanning every 1-3 s for 4 s
    assert int(aggregated["Failure Count"]) == 0
    batches = json.loads(report.read_text())
    assert batches["responses"] >= 10 and batches["mean_batch_size"] >= 1


def test_timeout_sweep_reports_and_recommends(demo_onnx_path, tmp_path, footprint_cache):
    out = tmp_path / "sweep"
    done = run(
        "scripts/tune_timeout.py", "sweep", "--model", str(demo_onnx_path), "--timeouts", "0", "5",
        "--users", "4", "--duration", "2", "--policies", "fixed", "adaptive",
        "--env", f"FOOTPRINT_CACHE={footprint_cache}", "WORKERS=1",
        "--out", str(out),
    )  # fmt: skip
    with open(out.with_suffix(".csv"), newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["batch_policy"], row["batch_timeout_ms"], row["users"]) for row in rows] == [
        ("fixed", "0.0", "4"),
        ("fixed", "5.0", "4"),
        ("adaptive", "0.0", "4"),
    ]
    assert all(int(row["requests"]) > 0 and int(row["failures"]) == 0 for row in rows)
    assert all(float(row["mean_batch_size"]) >= 1 for row in rows)
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "best for 4 users by avg: BATCH_POLICY=" in done.stdout
    assert "[3/3] BATCH_POLICY=adaptive users=4" in done.stdout  # progress shown


def test_bench_measures_ours_and_the_baseline(demo_model_path, tmp_path, footprint_cache):
    markdown = tmp_path / "bench.md"
    done = run(
        "scripts/bench.py", "--model", str(demo_model_path), "--duration", "1", "--concurrency", "4",
        "--rates", "20", "--env", f"FOOTPRINT_CACHE={footprint_cache}", "WORKERS=1", "--markdown", str(markdown),
    )  # fmt: skip
    table = markdown.read_text()
    assert table in done.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ours") or line.startswith("| baseline")]
    assert len(rows) == 4  # one closed-loop and one open-loop level, for each server
    for line in rows:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert float(cells[2]) > 0 and float(cells[3]) > 0  # throughput, and the in-process limit around it
        assert cells[12] == "0"  # errors
        if "closed, 4 clients" in line:
            assert cells[6].endswith("%"), "a closed loop of 4 is set against one in-process batch of 4 after another"
    assert "In-process limit, measured around each row: batch 1 takes" in table


def test_soak_reports_each_workers_memory_growth(demo_onnx_path, footprint_cache):
    done = subprocess.run(
        [sys.executable, "scripts/soak.py", "--model", str(demo_onnx_path), "--requests", "1000",
         "--max-growth", "0.5", "--env", f"FOOTPRINT_CACHE={footprint_cache}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert ", 0 failed; RSS growth per worker: " in summary and "%" in summary
