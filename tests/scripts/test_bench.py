"""The benchmark's table: ratios to the in-process limit and batch-1 latency."""

from __future__ import annotations

from scripts.bench import Measurement, format_comparison, format_table, parse_servers
from scripts.in_process_limit import InProcessLimit
from scripts.loadgen import LoadResult

LIMIT = InProcessLimit(batch1_ms=10.0, max_batch_size=32, max_batch_ms=40.0, two_at_once_ms=32.0, batch_ms={8: 20.0})


def test_in_process_throughput_is_instances_per_second_at_the_largest_batch():
    assert LIMIT.throughput_rps == 800 and LIMIT.two_at_once_rps == 1000


def test_a_closed_loop_of_c_clients_is_also_set_against_one_batch_of_c_after_another():
    assert LIMIT.batch_of_rps(8) == 400 and LIMIT.batch_of_rps(32) == 800
    assert LIMIT.batch_of_rps(128) is None, "more clients than a batch holds: no batch of them all"


def test_table_states_throughput_and_latency_as_ratios():
    load = LoadResult(
        "closed", 128, duration_s=10.0, latencies_by_status_s={200: [0.015] * 98 + [0.030] * 2}, client_cpu_s=1.0
    )
    load.statuses = {200: 7000}
    load.batch_sizes = [32]
    baseline = LoadResult("open", 900, duration_s=10.0, latencies_by_status_s={200: [2.0]}, client_cpu_s=0.5)
    baseline.statuses = {200: 200, 503: 10}
    slower = InProcessLimit(batch1_ms=20.0, max_batch_size=32, max_batch_ms=80.0, two_at_once_ms=64.0)
    table = format_table([Measurement("ours", load, 150.0, LIMIT), Measurement("baseline", baseline, 95.0, slower)])
    assert "batch 1 takes 10.00-20.00 ms; batch 32 takes 40.0-80.0 ms = 400-800 instances/s one batch" in table
    assert "500-1000 instances/s with two batches side by side" in table
    row = "| ours | closed, 128 clients | 700.0 | 800 | 88% | 70% | - | 15.0 | 10.0 | 1.50x | 30.0 | 3.00x | 0 |"
    assert row in table
    assert "| baseline | open, 900 req/s | 20.0 | 400 | 5% | 4% | - | 2000.0 | 20.0 | 100.00x |" in table
    eight = format_table([Measurement("ours", closed(8, 360.0), 100.0, LIMIT)])
    assert "| ours | closed, 8 clients | 360.0 | 800 | 45% | 36% | 90% |" in eight, "360 of the 400 a batch of 8 allows"


def test_each_row_is_compared_with_the_mean_of_the_limits_measured_around_it():
    after = InProcessLimit(batch1_ms=20.0, max_batch_size=32, max_batch_ms=60.0, two_at_once_ms=48.0, batch_ms={8: 30})
    assert InProcessLimit.mean(LIMIT, after) == InProcessLimit(15.0, 32, 50.0, 40.0, {8: 25.0})


def closed(clients: int, throughput_rps: float) -> LoadResult:
    load = LoadResult("closed", clients, duration_s=10.0, latencies_by_status_s={200: [0.01]})
    load.statuses = {200: int(throughput_rps * 10)}
    return load


def test_servers_are_a_label_and_their_settings():
    assert parse_servers(["ours:", "adaptive:BATCH_POLICY=adaptive,LATENCY_SLO_MS=50"]) == [
        ("ours", {}),
        ("adaptive", {"BATCH_POLICY": "adaptive", "LATENCY_SLO_MS": "50"}),
    ]


def test_comparison_sets_one_configuration_against_the_best_other_at_each_level():
    measurements = [
        Measurement(name, closed(8, rps), 100.0, LIMIT)
        for name, rps in (("fixed 0 ms", 160.0), ("fixed 5 ms", 200.0), ("adaptive", 190.0))
    ]
    table = format_comparison(measurements, "adaptive")
    # 8 clients at 200 req/s wait 40 ms on average; at 190, 42.1 ms.
    assert "| 8 | 42.1 | fixed 5 ms | 40.0 | 1.05 | 190.0 | fixed 5 ms | 200.0 | 0.95 |" in table
