"""The refusal summary: one log line per interval at most, counting every refusal by reason."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY

from service.telemetry.refusals import RefusalSummary


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def summary_lines(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == "refusals"]


def test_refusals_are_logged_at_most_once_an_interval_and_none_is_left_uncounted(caplog):
    clock = Clock()
    summary = RefusalSummary(interval_s=1.0, clock=clock)
    counted_before = REGISTRY.get_sample_value("model_server_rejected_requests_total", {"reason": "queue_full"}) or 0
    with caplog.at_level(logging.INFO):
        clock.now += 5  # the first refusal after a quiet spell is logged at once
        summary.refused("queue_full")
        for _ in range(500):  # a burst within the next second: counted, not logged
            clock.now += 0.001
            summary.refused("queue_full")
        summary.refused("deadline_unreachable")
        clock.now += 1.0
        summary.refused("queue_full")  # a second has passed: one line for everything since the first
        summary.flush()  # nothing left to say
    lines = summary_lines(caplog)
    assert [line.refused for line in lines] == [{"queue_full": 1}, {"queue_full": 501, "deadline_unreachable": 1}]
    assert all(line.levelno == logging.WARNING for line in lines)
    counted = REGISTRY.get_sample_value("model_server_rejected_requests_total", {"reason": "queue_full"})
    assert counted == counted_before + 502


def test_flush_logs_what_the_last_interval_counted(caplog):
    clock = Clock()
    summary = RefusalSummary(interval_s=1.0, clock=clock)
    with caplog.at_level(logging.INFO):
        summary.refused("not_ready")
        summary.refused("not_ready")
        summary.flush()
    assert [line.refused for line in summary_lines(caplog)] == [{"not_ready": 2}]
