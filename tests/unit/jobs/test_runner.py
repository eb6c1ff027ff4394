"""The runner over a real batcher and a real huey queue in SQLite: parts, cancels, retries, resumption."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from service.backends.base import ServedModel, predict_each_model
from service.backends.signature import ModelSignature, TensorInfo
from service.batching.batcher import Batcher
from service.batching.policy import FixedTimeout
from service.jobs import records
from service.jobs.queue import JobQueue
from service.jobs.records import CANCELLED, DONE, FAILED, QUEUED
from service.jobs.runner import PASSES_PER_PART, JobRunner
from service.jobs.service import Jobs
from service.jobs.stores import SqliteJobStore
from service.settings import Settings
from service.versions.registry import ModelVersions, VersionState
from tests.support import one_model

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
    runner = JobRunner(store, queue, one_model(batcher), lease_s=30, keep_s=60)
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
    batcher = jobs.runner._batcher_for("m")
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
    jobs.runner._batcher_for("m").close(TIMEOUT_S)
    run_next(jobs)
    assert jobs.get(job_id).state == QUEUED
    task = jobs.queue.next_task()
    assert task is not None and task.retries == 1


class PublishingStore(SqliteJobStore):
    """A store that publishes version 2 and retires version 1 once the first part of a job is stored."""

    def __init__(self, path, versions: ModelVersions):
        super().__init__(path)
        self.versions = versions

    def put_part(self, job_id, part, data, version):
        super().put_part(job_id, part, data, version)
        if 1 in self.versions.numbers(VersionState.AVAILABLE):
            self.versions.add(2, "", scaling_model(2), 0.0)
            self.versions.retire(1, drain_timeout_s=TIMEOUT_S)


def scaling_model(factor: int) -> ServedModel:
    signature = ModelSignature((TensorInfo("x", "float32", (2,)),), (TensorInfo("y", "float32", (2,)),))
    return ServedModel("m", factor, signature, lambda arrays: {"y": arrays["x"] * factor}, (1, 2, 4))


@pytest.fixture
def versioned_jobs(tmp_path):
    """Jobs over a batcher that runs each queued payload on its own version, versions 1 then 2 of y = v x."""
    settings = Settings(model_name="m", jobs_db=str(tmp_path / "jobs.sqlite3"), job_retries=1)
    versions = ModelVersions("m")
    versions.add(1, "", scaling_model(1), 0.0)
    batcher = Batcher(predict_each_model, FixedTimeout(0), max_batch_size=4, max_queue=16, concurrent_batches=1)
    store, queue = PublishingStore(settings.jobs_db_path, versions), JobQueue(settings)
    runner = JobRunner(
        store,
        queue,
        one_model(batcher),
        lease_s=30,
        keep_s=60,
        lease_model=lambda name, version: versions.lease(version),
    )
    yield Jobs(store, queue, runner, settings)
    batcher.close(TIMEOUT_S)


def test_a_job_whose_version_is_retired_finishes_on_the_one_that_replaced_it_and_says_so(versioned_jobs):
    part = PASSES_PER_PART * 4
    values = range(2 * part)
    job_id = versioned_jobs.submit("m", 1, "row", {"x": np.array([[v, v] for v in values], np.float32)}, 2 * part, 0).id
    run_next(versioned_jobs)
    job, outputs = versioned_jobs.result(job_id)
    assert job.state == DONE and job.version == 1
    assert outputs["y"][:, 0].tolist() == [v for v in range(part)] + [2 * v for v in range(part, 2 * part)]
    status = versioned_jobs.describe(job)
    assert status["part_versions"] == [1, 2] and status["part_instances"] == part and not status["pinned"]


def test_a_queued_job_runs_on_the_version_that_replaced_its_own(versioned_jobs):
    versions = versioned_jobs.store.versions
    job_id = versioned_jobs.submit("m", 1, "row", {"x": np.array([[1, 1], [2, 2]], np.float32)}, 2, 0).id
    versions.add(2, "", scaling_model(2), 0.0)
    versions.retire(1, drain_timeout_s=TIMEOUT_S)  # published while the job waited
    run_next(versioned_jobs)
    job, outputs = versioned_jobs.result(job_id)
    assert outputs["y"][:, 0].tolist() == [2.0, 4.0] and versioned_jobs.describe(job)["part_versions"] == [2]


def test_a_job_that_named_its_version_fails_once_that_version_is_retired(versioned_jobs):
    part = PASSES_PER_PART * 4
    inputs = {"x": np.ones((2 * part, 2), np.float32)}
    job_id = versioned_jobs.submit("m", 1, "row", inputs, 2 * part, 0, pinned=True).id
    run_next(versioned_jobs)  # its first part on version 1, then version 1 is retired
    job = versioned_jobs.get(job_id)
    assert job.state == FAILED and "version 1 is END" in job.error and "named version 1" in job.error
    assert versioned_jobs.describe(job)["part_versions"] == [1, None]
    assert versioned_jobs.queue.next_task() is None, "no retry spent on what cannot succeed"


def test_a_job_queued_here_wakes_an_idle_runner_at_once(tmp_path, forward, monkeypatch):
    from service.jobs import runner as runner_module

    idle_s = 20.0
    monkeypatch.setattr(runner_module, "IDLE_POLL_S", idle_s)  # an idle runner would look again in 20 s
    settings = Settings(model_name="m", jobs_db=str(tmp_path / "jobs.sqlite3"))
    batcher = Batcher(forward, FixedTimeout(0), max_batch_size=4, max_queue=16, concurrent_batches=1)
    store, queue = SqliteJobStore(settings.jobs_db_path), JobQueue(settings)
    jobs = Jobs(store, queue, JobRunner(store, queue, one_model(batcher), lease_s=300, keep_s=60), settings)
    polled = threading.Event()
    next_task = queue.next_task

    def noting_an_empty_queue():
        task = next_task()
        if task is None:
            polled.set()
        return task

    monkeypatch.setattr(queue, "next_task", noting_an_empty_queue)
    jobs.runner.start()
    try:
        assert polled.wait(TIMEOUT_S)  # it found the queue empty, and waits
        started = time.monotonic()
        job_id = submit(jobs, range(3))
        while jobs.get(job_id).state != DONE:
            assert time.monotonic() - started < idle_s / 4, "the runner waited out its idle time"
            time.sleep(0.01)  # polling the job's state
    finally:
        jobs.runner.stop()
        batcher.close(TIMEOUT_S)
