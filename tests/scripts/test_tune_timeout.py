"""The sweep's arithmetic and outputs on small synthetic results."""

from __future__ import annotations

import pytest

from scripts.tune_timeout import (
    Setting,
    SweepRow,
    format_table,
    parse_locust_stats,
    plot,
    read_csv,
    recommend,
    write_csv,
)


def row(timeout, users, avg, failures=0, p95=None, max_batch=32, requests=100, policy="fixed"):
    return SweepRow(
        timeout, max_batch, None, users, requests, failures, avg, avg, p95 or avg * 2, avg * 3, 10.0, 2.0, policy
    )


ROWS = [
    row(0, 20, 30.0),
    row(5, 20, 20.0),
    row(20, 20, 25.0),
    row(0, 100, 90.0, p95=100),
    row(5, 100, 40.0, failures=3),  # fastest on average, but it failed requests
    row(20, 100, 60.0, p95=300),
    row(0, 100, 500.0, max_batch=1),
    row(0, 20, 21.0, policy="adaptive"),
]


def test_recommends_the_lowest_metric_among_the_most_reliable():
    assert recommend(ROWS, 20, "avg").batch_timeout_ms == 5
    best = recommend(ROWS, 100, "avg")
    assert (best.batch_timeout_ms, best.failures) == (20, 0)
    assert recommend(ROWS, 100, "p95").batch_timeout_ms == 0


def test_recommendation_needs_the_target_load():
    with pytest.raises(ValueError, match="300 users"):
        recommend(ROWS, 300, "avg")


def test_setting_env_is_what_the_server_reads():
    assert Setting(2.5, 16, 3).env() == {
        "BATCH_POLICY": "fixed",
        "BATCH_TIMEOUT_MS": "2.5",
        "MAX_BATCH_SIZE": "16",
        "WORKERS": "3",
    }
    assert Setting(0, batch_policy="adaptive").env() == {"BATCH_POLICY": "adaptive"}


def test_csv_round_trip(tmp_path):
    path = tmp_path / "sweep.csv"
    write_csv(ROWS, path)
    assert read_csv(path) == ROWS


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "sweep.png"
    plot(ROWS, path, "avg")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_table_has_a_line_per_row():
    table = format_table(ROWS).splitlines()
    assert len(table) == 2 + len(ROWS)
    assert "| BATCH_POLICY=fixed BATCH_TIMEOUT_MS=5 MAX_BATCH_SIZE=32 | 100 | 100 | 3 | 40.0 |" in table[6]
    assert table[-1].startswith("| BATCH_POLICY=adaptive MAX_BATCH_SIZE=32 | 20 |")


def test_a_csv_from_before_the_policies_reads_as_fixed(tmp_path):
    path = tmp_path / "old.csv"
    write_csv(ROWS[:1], path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    assert read_csv(path) == ROWS[:1]


def test_parses_locusts_aggregated_row(tmp_path):
    stats = tmp_path / "run_stats.csv"
    stats.write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
        "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
        "99.99%,100%\n"
        "POST,/predict,200,1,10,12.5,4,37,227,25.5,0.1,10,11,11,11,19,30,32,36,37,37,37\n"
        ",Aggregated,200,1,10,12.5,4,37,227,25.5,0.1,10,11,11,11,19,30,32,36,37,37,37\n"
    )
    assert parse_locust_stats(stats) == {
        "requests": 200,
        "failures": 1,
        "avg_ms": 12.5,
        "p50_ms": 10.0,
        "p95_ms": 30.0,
        "p99_ms": 36.0,
        "throughput_rps": 25.5,
    }
