"""The runner over a real batcher and a real huey queue in SQLite: parts, cancels, retries, resumption."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from service.batching.batcher import Batcher
from service.batching.policy import FixedTimeout
from service.jobs import records
from service.jobs.queue import JobQueue
from service.jobs.records import CANCELLED, DONE, FAILED, QUEUED
from service.jobs.runner import PASSES_PER_PART, JobRunner
from service.jobs.service import Jobs
from service.jobs.stores import SqliteJobStore
from service.settings import Settings

TIMEOUT_S = 10


class Forward:
    """y = 2x over arrays; records every instance computed; can be held, and can fail on chosen values."""

    def __init__(self):
        self.computed: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.failing: set[float] = set()
        self.failures_left = 0

    def __call__(self, payloads):
        self.started.release()
        assert self.gate.wait(TIMEOUT_S)
        values = [float(v) for payload in payloads for v in payload["x"][:, 0]]
        if self.failures_left and self.failing.intersection(values):
            self.failures_left -= 1
            raise ValueError("a bad pass")
        self.computed += values
        return [{"y": payload["x"] * 2} for payload in payloads]


@pytest.fixture
def forward():
    forward = Forward()
    yield forward
    forward.gate.set()


@pytest.fixture
def jobs(tmp_path, forward):
    settings = Settings(model_name="m", jobs_db=str(tmp_path / "jobs.sqlite3"), job_retries=1)
    batcher = Batcher(forward, FixedTimeout(0), max_batch_size=4, max_queue=16, concurrent_batches=1)
    store, queue = SqliteJobStore(settings.jobs_db_path), JobQueue(settings)
    runner = JobRunner(store, queue, batcher, lease_s=30, keep_s=60)
    yield Jobs(store, queue, runner, settings)
    batcher.close(TIMEOUT_S)


def submit(jobs: Jobs, values) -> str:
    inputs = {"x": np.array([[v, -v] for v in values], np.float32)}
    return jobs.submit("m", 1, "row", inputs, len(values), priority=0).id


def run_next(jobs: Jobs) -> None:
    """What the runner's loop does once: take the next task and execute it."""
    task = jobs.queue.next_task()
    assert task is not None, "a task was queued"
    jobs.queue.execute(task)


def test_a_job_runs_in_parts_and_its_result_is_every_prediction_in_order(jobs, forward):
    part = PASSES_PER_PART * 4
    job_id = submit(jobs, range(2 * part + 10))
    run_next(jobs)
    job, outputs = jobs.result(job_id)
    assert job.state == DONE and job.done == job.total == 2 * part + 10
    assert outputs["y"][:, 0].tolist() == [2 * v for v in range(2 * part + 10)]
    assert len(jobs.store.parts(job_id)) == 3
    assert job.created_at <= job.started_at <= job.finished_at
    assert jobs.queue.next_task() is None


def test_repeated_instances_of_a_part_are_computed_once(jobs, forward):
    job_id = submit(jobs, [1, 2, 1, 2, 3])
    run_next(jobs)
    assert jobs.result(job_id)[1]["y"][:, 0].tolist() == [2, 4, 2, 4, 6]
    assert sorted(forward.computed) == [1, 2, 3]


def test_a_cancelled_queued_job_never_runs(jobs, forward):
    job_id = submit(jobs, range(10))
    assert jobs.cancel(job_id).state == CANCELLED
    run_next(jobs)
    assert forward.computed == [] and jobs.get(job_id).state == CANCELLED


def test_a_cancelled_running_job_stops_before_its_next_batch(jobs, forward):
    job_id = submit(jobs, range(PASSES_PER_PART * 4))  # one part of 16 passes
    forward.gate.clear()
    runner = threading.Thread(target=run_next, args=(jobs,))
    runner.start()
    assert forward.started.acquire(timeout=TIMEOUT_S)  # the first pass is under way, held
    jobs.cancel(job_id)
    batcher = jobs.runner._batcher
    deadline = time.monotonic() + TIMEOUT_S
    while batcher.background_instances and time.monotonic() < deadline:  # until the runner has seen the cancel
        time.sleep(0.001)
    forward.gate.set()
    runner.join(TIMEOUT_S)
    assert jobs.get(job_id).state == CANCELLED
    assert forward.computed == [0.0, 1.0, 2.0, 3.0], "only the pass under way when it was cancelled ran"
    assert jobs.store.parts(job_id) == {}


def test_a_failed_part_is_retried_by_huey_and_the_job_resumes_where_it_stopped(jobs, forward):
    part = PASSES_PER_PART * 4
    job_id = submit(jobs, range(2 * part))
    forward.failing, forward.failures_left = {float(part)}, 1  # the second part's first pass fails once
    run_next(jobs)
    assert jobs.get(job_id).state == QUEUED, "back in the queue, one retry spent"
    run_next(jobs)
    job, outputs = jobs.result(job_id)
    assert job.state == DONE and outputs["y"][:, 0].tolist() == [2 * v for v in range(2 * part)]
    assert forward.computed.count(0.0) == 1, "the stored first part was not computed again"


def test_a_job_that_keeps_failing_fails_with_its_error_once_retries_are_spent(jobs, forward):
    job_id = submit(jobs, range(10))
    forward.failing, forward.failures_left = {3.0}, 100
    run_next(jobs)
    run_next(jobs)  # the one retry (JOB_RETRIES=1)
    job = jobs.get(job_id)
    assert job.state == FAILED and "a bad pass" in job.error
    assert jobs.queue.next_task() is None


def test_a_job_whose_worker_died_is_resumed_and_fails_after_too_many_deaths(jobs, forward):
    job_id = submit(jobs, range(10))
    jobs.queue.next_task()  # taken by a worker ...
    jobs.store.update(job_id, records.claim("dead-worker", time.time() - 100, 30))  # ... that died holding it
    jobs.runner.upkeep()
    assert jobs.get(job_id).state == QUEUED and jobs.get(job_id).resumes == 1
    run_next(jobs)
    assert jobs.get(job_id).state == DONE
    doomed = submit(jobs, range(5))
    jobs.queue.next_task()
    jobs.store.update(doomed, lambda job: dataclasses.replace(job, resumes=records.MAX_RESUMES - 1))
    jobs.store.update(doomed, records.claim("dead-worker", time.time() - 100, 30))
    jobs.runner.upkeep()
    assert jobs.get(doomed).state == FAILED and "died" in jobs.get(doomed).error


def test_a_queued_job_whose_task_was_lost_is_queued_again(jobs, forward):
    job_id = submit(jobs, range(4))
    jobs.queue.next_task()  # a worker took the task and died before claiming the job
    jobs.store.update(job_id, lambda job: dataclasses.replace(job, created_at=job.created_at - 100))
    jobs.runner.upkeep()
    run_next(jobs)
    assert jobs.get(job_id).state == DONE


def test_a_stopping_worker_puts_its_job_back_without_spending_a_retry(jobs, forward):
    job_id = submit(jobs, range(10))
    jobs.runner._batcher.close(TIMEOUT_S)
    run_next(jobs)
    assert jobs.get(job_id).state == QUEUED
    task = jobs.queue.next_task()
    assert task is not None and task.retries == 1
