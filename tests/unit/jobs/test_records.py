"""A job's changes: claimed once, renewed only by its owner, finished once, requeued when its worker stops."""

from __future__ import annotations

from service.jobs import records
from service.jobs.records import CANCELLED, DONE, QUEUED, RUNNING, JobRecord


def job(**changes) -> JobRecord:
    import dataclasses

    return dataclasses.replace(JobRecord.new("m", 1, "row", 100, 32, 0, now=1000.0), **changes)


def test_a_queued_job_is_claimed_once():
    claimed = records.claim("a", 1001.0, 30)(job())
    assert claimed.state == RUNNING and claimed.owner == "a" and claimed.lease_until == 1031.0
    assert claimed.started_at == 1001.0
    assert records.claim("b", 1002.0, 30)(claimed) is None, "held by a live worker"


def test_a_running_job_whose_lease_lapsed_may_be_claimed_again_and_keeps_its_start():
    lapsed = records.claim("a", 1001.0, 30)(job())
    again = records.claim("b", 1040.0, 30)(lapsed)
    assert again.owner == "b" and again.started_at == 1001.0


def test_only_the_owner_records_progress():
    running = records.claim("a", 1001.0, 30)(job())
    assert records.progress("b", 10, 1002.0, 30)(running) is None
    renewed = records.progress("a", 10, 1002.0, 30)(running)
    assert renewed.done == 10 and renewed.lease_until == 1032.0


def test_a_job_finishes_once_and_is_kept_for_its_time():
    running = records.claim("a", 1001.0, 30)(job())
    cancelled = records.finish(None, CANCELLED, 1005.0, 60)(running)
    assert cancelled.state == CANCELLED and cancelled.keep_until == 1065.0 and cancelled.owner is None
    assert records.finish("a", DONE, 1006.0, 60)(cancelled) is None, "a cancel is not undone by the runner"
    assert records.progress("a", 50, 1006.0, 30)(cancelled) is None


def test_a_job_goes_back_to_the_queue_counting_the_deaths_of_its_workers():
    running = records.claim("a", 1001.0, 30)(job())
    assert records.requeue("b")(running) is None
    stopped = records.requeue("a")(running)
    assert stopped.state == QUEUED and stopped.resumes == 0 and stopped.owner is None
    died = records.requeue(None, died=True)(running)
    assert died.resumes == 1


def test_a_record_survives_its_bytes_and_knows_its_parts():
    record = job(done=64, error="x")
    assert JobRecord.from_bytes(record.to_bytes()) == record
    assert record.chunks == 4  # 100 instances in parts of 32
