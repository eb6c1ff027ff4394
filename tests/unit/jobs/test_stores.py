"""Both job stores, SQLite and a real Redis: records, inputs, parts, atomic changes, deletion after keeping."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from service.jobs import records
from service.jobs.records import DONE, QUEUED, RUNNING, JobRecord
from service.jobs.stores import RedisJobStore, SqliteJobStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SqliteJobStore(tmp_path / "state" / "jobs.sqlite3")
    return RedisJobStore(request.getfixturevalue("redis_client"))


def new_job(total: int = 10) -> JobRecord:
    return JobRecord.new("m", 1, "row", total, 4, 0, now=1000.0)


def test_a_job_is_stored_with_its_inputs_and_parts(store):
    job = new_job()
    store.add(job, b"inputs")
    assert store.get(job.id) == job and store.inputs(job.id) == b"inputs"
    store.put_part(job.id, 1, b"second")
    store.put_part(job.id, 0, b"first")
    store.put_part(job.id, 1, b"second again")  # a part computed twice (a retry) is kept once
    assert store.parts(job.id) == {0: b"first", 1: b"second again"}
    assert store.get("no-such-job") is None and store.inputs("no-such-job") is None


def test_only_one_of_many_workers_claims_a_job(store):
    job = new_job()
    store.add(job, b"")
    claimed, barrier = [], threading.Barrier(8)

    def claim(owner: str):
        barrier.wait(10)
        if store.update(job.id, records.claim(owner, 1001.0, 30)) is not None:
            claimed.append(owner)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(claimed) == 1 and store.get(job.id).owner == claimed[0]


def test_active_jobs_are_the_queued_and_running_ones(store):
    queued, running, done = new_job(), new_job(), new_job()
    for job in (queued, running, done):
        store.add(job, b"")
    store.update(running.id, records.claim("a", 1001.0, 30))
    store.update(done.id, records.claim("a", 1001.0, 30))
    store.update(done.id, records.finish("a", DONE, 1002.0, 60))
    assert {(job.id, job.state) for job in store.active()} == {(queued.id, QUEUED), (running.id, RUNNING)}


def test_sqlite_deletes_finished_jobs_once_kept_long_enough(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    old, recent = new_job(), new_job()
    for job, finished_at in ((old, 1000.0), (recent, 2000.0)):
        store.add(job, b"x")
        store.put_part(job.id, 0, b"p")
        store.update(job.id, lambda j, t=finished_at: records.finish(None, DONE, t, 500)(j))
    assert store.purge(now=1600.0) == 1
    assert store.get(old.id) is None and store.inputs(old.id) is None and store.parts(old.id) == {}
    assert store.get(recent.id) is not None


def test_redis_lets_finished_jobs_expire_with_their_inputs_and_parts(redis_client):
    store = RedisJobStore(redis_client)
    job = new_job()
    store.add(job, b"x")
    store.put_part(job.id, 0, b"p")
    import time

    store.update(job.id, records.finish(None, DONE, time.time(), 3600))
    for key in (f"tfms:job:{job.id}", f"tfms:job:{job.id}:inputs", f"tfms:job:{job.id}:parts"):
        assert 3500 <= redis_client.ttl(key) <= 3601
    assert store.active() == []


def test_a_change_that_does_not_apply_changes_nothing(store):
    job = dataclasses.replace(new_job(), state=DONE)
    store.add(job, b"")
    assert store.update(job.id, records.claim("a", 1001.0, 30)) is None
    assert store.get(job.id) == job
