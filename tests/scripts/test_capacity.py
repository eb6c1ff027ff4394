"""scripts/capacity.py: pod capacity at a latency objective, replicas for a daily volume, pod resources."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scripts.capacity import CapacityError, PodCapacity, plan_replicas, pod_capacity, pod_resources
from scripts.launcher import PROJECT_ROOT


def row(server, mode, level, throughput, p99, errors=0):
    return {
        "server": server,
        "mode": mode,
        "level": level,
        "throughput_rps": throughput,
        "p99_ms": p99,
        "errors": errors,
    }


BENCH = {
    "model": "models/heavy.keras",
    "machine": "2 cores",
    "rows": [
        row("ours", "closed", 1, 55.0, 20.0),
        row("ours", "closed", 32, 420.0, 95.0),
        row("ours", "closed", 128, 730.0, 260.0),  # over the objective
        row("ours", "open", 300, 299.0, 60.0),
        row("ours", "open", 900, 650.0, 90.0, errors=3000),  # shed load
        row("baseline", "closed", 8, 900.0, 10.0),  # never ours
    ],
}


def test_capacity_is_the_best_error_free_throughput_within_the_objective():
    capacity = pod_capacity(BENCH, slo_ms=100)
    assert capacity == PodCapacity(420.0, 95.0, "closed loop, 32 clients")
    assert pod_capacity(BENCH, slo_ms=50).requests_per_s == 55.0


def test_no_level_within_the_objective_says_what_to_measure():
    with pytest.raises(CapacityError, match="measure lower loads"):
        pod_capacity(BENCH, slo_ms=10)


def test_one_million_a_day_is_twelve_a_second_and_twenty_three_at_peak():
    plan = plan_replicas(1e6, 2.0, PodCapacity(420.0, 95.0, ""), cpu_target=0.7, burst=1.5)
    assert round(plan.average_rps, 1) == 11.6 and round(plan.peak_rps, 1) == 23.1
    assert (plan.replicas_at_peak, plan.min_replicas, plan.max_replicas) == (2, 2, 2)


def test_replicas_grow_with_the_volume_and_keep_a_spare():
    capacity = PodCapacity(100.0, 80.0, "")
    plan = plan_replicas(1e8, 2.0, capacity, cpu_target=0.5, burst=1.5)
    # peak 2314.8/s over 50/s per pod at the target = 46.3 -> 47, plus one spare
    assert plan.replicas_at_peak == 48
    assert plan.min_replicas == 25  # average 1157.4/s -> 23.1 -> 24, plus one
    assert plan.max_replicas == 71  # 1.5 x peak -> 69.4 -> 70, plus one


def test_pod_resources_cover_the_master_and_the_planners_workers():
    two_cores = pod_resources(638, cores=2)
    assert two_cores == {
        "workers": 1,
        "requests": {"cpu": "2", "memory": "768Mi"},
        "limits": {"cpu": "2", "memory": "1152Mi"},
    }
    assert pod_resources(638, cores=8)["workers"] == 4


def test_plan_command_prints_the_table(tmp_path):
    bench_file = tmp_path / "bench.json"
    bench_file.write_text(json.dumps(BENCH))
    done = subprocess.run(
        [sys.executable, "scripts/capacity.py", "plan", "--bench", str(bench_file), "--slo-ms", "100"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Pod capacity: 420.0 requests/s with p99 95.0 ms" in done.stdout
    assert "| 100,000,000 | 1157.4 | 2314.8 | 9 |" in done.stdout
