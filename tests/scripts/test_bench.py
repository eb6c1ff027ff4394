"""The benchmark's table: ratios to the in-process limit and batch-1 latency."""

from __future__ import annotations

from bench import InProcessLimit, Measurement, format_table
from loadgen import LoadResult

LIMIT = InProcessLimit(batch1_ms=10.0, max_batch_size=32, max_batch_ms=40.0)


def test_in_process_throughput_is_instances_per_second_at_the_largest_batch():
    assert LIMIT.throughput_rps == 800


def test_table_states_throughput_and_latency_as_ratios():
    load = LoadResult("closed", 128, duration_s=10.0, latencies_s=[0.015] * 98 + [0.030] * 2, client_cpu_s=1.0)
    load.statuses = {200: 7000}
    load.batch_sizes = [32]
    baseline = LoadResult("open", 900, duration_s=10.0, latencies_s=[2.0], client_cpu_s=0.5)
    baseline.statuses = {200: 200, 503: 10}
    table = format_table(LIMIT, [Measurement("ours", load, 150.0), Measurement("baseline", baseline, 95.0)])
    assert "batch 32 takes 40.0 ms = 800 instances/s" in table
    assert "| ours | closed, 128 clients | 700.0 | 88% | 15.0 | 1.50x | 30.0 | 3.00x | 0 | 32.0 | 150% | 10% |" in table
    assert "| baseline | open, 900 req/s | 20.0 | 2% | 2000.0 | 200.00x |" in table
