"""The load generator's statistics."""

from __future__ import annotations

import http.server
import math
import threading

import pytest

from scripts.loadgen import Load, LoadResult, Workload, _Answer, _record, _Target, percentile, run_together


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.5, 50), (0.99, 99), (1.0, 100), (0.01, 1), (0.0, 1), (0.951, 96)],
)
def test_nearest_rank_percentile(fraction, expected):
    assert percentile([float(v) for v in range(100, 0, -1)], fraction) == expected


def test_percentile_of_few_and_no_values():
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([1.0, 2.0], 0.5) == 1.0
    assert math.isnan(percentile([], 0.5))


def test_result_summary_counts_errors_and_rates():
    result = LoadResult("closed", 4, duration_s=2.0, latencies_by_status_s={200: [0.010, 0.020, 0.030], 503: [0.040]})
    result.statuses = {200: 3, 503: 1}
    result.connection_errors = 2
    result.batch_sizes = [1, 3]
    result.client_cpu_s = 0.5
    summary = result.summary()
    assert summary["requests"] == 6 and summary["errors"] == 3
    assert summary["throughput_rps"] == 1.5  # only the 200s count
    assert summary["p50_ms"] == 20.0 and summary["p99_ms"] == 40.0
    assert summary["mean_batch"] == 2.0 and summary["client_cpu_percent"] == 25.0


def test_reported_percentiles_win_over_latencies():
    result = LoadResult("closed", 1, duration_s=1.0, reported_percentiles_ms={0.5: 7.0, 0.99: 9.0})
    assert result.percentile_ms(0.5) == 7.0 and result.percentile_ms(0.99) == 9.0


def test_answers_are_checked_against_their_own_instance_and_503s_against_retry_after():
    workload = Workload.from_answers({"instances": [[1.0], [2.0]], "predictions": [[10.0], [20.0]]})
    target = _Target("http://127.0.0.1:9", "/predict", workload)
    assert [target.next_request()[1] for _ in range(3)] == [0, 1, 0]  # each instance in turn
    assert target.requests[1].endswith(b'{"instances": [[2.0]]}')
    result = LoadResult("closed", 2, duration_s=1.0)
    _record(result, target, 0, _Answer(200, b'{"predictions": [[10.00001]]}'), 0.010)  # within the tolerance
    _record(result, target, 1, _Answer(200, b'{"predictions": [[10.0]]}'), 0.020)  # another request's answer
    _record(result, target, 1, _Answer(200, b"not json"), 0.030)
    _record(result, target, 0, _Answer(503, b"{}", retry_after="1"), 0.001)
    _record(result, target, 0, _Answer(503, b"{}"), 0.002)
    summary = result.summary()
    assert summary["wrong_answers"] == 2 and summary["missing_retry_after"] == 1
    assert summary["by_status"]["200"] == {"count": 3, "p50_ms": 20.0, "p99_ms": 30.0, "max_ms": 30.0}
    assert summary["by_status"]["503"]["count"] == 2 and summary["by_status"]["503"]["max_ms"] == 2.0


def test_loads_run_together_are_counted_apart():
    """An open loop on one path and a closed loop that retries at once on another, against a tiny server."""

    class Answers(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            status = 200 if self.path == "/steady" else 503
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        steady, flood = run_together(
            url, [Load("/steady", b"{}", rate_rps=50), Load("/flood", b"{}", clients=2)], duration_s=1.0
        )
    finally:
        server.shutdown()
    assert set(steady.statuses) == {200} and 20 <= steady.ok <= 100, "about 50 arrivals in 1 s"
    assert set(flood.statuses) == {503} and sum(flood.statuses.values()) > steady.ok, "a flood that does not wait"
    assert (steady.mode, flood.mode, flood.level) == ("open", "closed", 2)


def test_a_load_measured_in_steps_adds_up():
    merged, step = LoadResult("open", 10), LoadResult("open", 10, duration_s=2.0)
    step.count_answer(200, 0.01, 4)
    step.count_answer(503, 0.001, None)
    step.count_connection_error("ConnectionResetError")
    step.loaded_on_demand_s.append(0.01)
    merged.add(step)
    merged.add(step)
    assert (merged.duration_s, merged.statuses, merged.connection_errors) == (4.0, {200: 2, 503: 2}, 2)
    assert merged.connection_error_kinds == {"ConnectionResetError": 2} and merged.loaded_on_demand_s == [0.01, 0.01]
    assert merged.latencies_by_status_s[200] == [0.01, 0.01]
