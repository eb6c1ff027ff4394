"""scripts/overload.py: the worker's own served p99 from its access lines, and the table set against the drain bound."""

from __future__ import annotations

from scripts.loadgen import LoadResult
from scripts.overload import format_table, row, served_p99_ms

ACCESS = "2026-12-01 10:00:00,000 [7] INFO model_server.access [{id}] POST /predict {status} {ms} ms batch 32\n"


def test_served_p99_counts_the_worker_s_predict_200s_only():
    lines = [ACCESS.format(id=i, status=200, ms=float(i)) for i in range(1, 101)]
    lines.append(ACCESS.format(id="x", status=503, ms=9999.0))
    lines.append("2026-12-01 10:00:00,000 [7] INFO model_server.access [y] GET /healthz 200 5000.0 ms\n")
    assert served_p99_ms("".join(lines)) == 99.0
    assert served_p99_ms("no access lines\n") is None


def test_a_row_sets_goodput_against_capacity_and_the_served_p99_against_the_bound():
    result = LoadResult("closed", 512, duration_s=10.0)
    result.statuses = {200: 1800, 503: 40}
    result.latencies_by_status_s = {200: [2.0] * 1800, 503: [0.001] * 40}
    served = "".join(ACCESS.format(id=i, status=200, ms=400.0) for i in range(10))
    figures = row("wrk, 512 connections", result, capacity_rps=200.0, server_cpu_s=19.0, log_since=served)
    assert figures["of_capacity"] == 0.9 and figures["refused"] == 40 and figures["refused_p50_ms"] == 1.0
    assert figures["accepted_p99_ms"] == 2000.0 and figures["served_p99_ms"] == 400.0
    table = format_table([figures], drain_bound_ms=800.0)
    assert "| wrk, 512 connections | 180.0 | 0.90 | 40 | 0 | 1.0 | 2000.0 | 400.0 | 0.50 | 190% |" in table
