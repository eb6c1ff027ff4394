"""Both job stores, SQLite and a real Redis: records, inputs, parts, atomic changes, deletion after keeping."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading

import pytest

from scripts.launcher import PROJECT_ROOT
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


def test_a_job_is_stored_with_its_inputs_and_parts_and_the_version_of_each(store):
    job = new_job()
    store.add(job, b"inputs")
    assert store.get(job.id) == job and store.inputs(job.id) == b"inputs"
    store.put_part(job.id, 1, b"second", version=1)
    store.put_part(job.id, 0, b"first", version=2)
    store.put_part(job.id, 1, b"second again", version=2)  # a part computed twice (a retry) is kept once
    assert store.parts(job.id) == {0: b"first", 1: b"second again"}
    assert store.stored_parts(job.id) == {0: 2, 1: 2}
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
        store.put_part(job.id, 0, b"p", version=1)
        store.update(job.id, lambda j, t=finished_at: records.finish(None, DONE, t, 500)(j))
    assert store.purge(now=1600.0) == 1
    assert store.get(old.id) is None and store.inputs(old.id) is None and store.parts(old.id) == {}
    assert store.get(recent.id) is not None


def test_redis_lets_finished_jobs_expire_with_their_inputs_and_parts(redis_client):
    store = RedisJobStore(redis_client)
    job = new_job()
    store.add(job, b"x")
    store.put_part(job.id, 0, b"p", version=1)
    import time

    store.update(job.id, records.finish(None, DONE, time.time(), 3600))
    for key in RedisJobStore._keys(job.id):
        assert 3500 <= redis_client.ttl(key) <= 3601
    assert store.active() == []


def test_a_change_that_does_not_apply_changes_nothing(store):
    job = dataclasses.replace(new_job(), state=DONE)
    store.add(job, b"")
    assert store.update(job.id, records.claim("a", 1001.0, 30)) is None
    assert store.get(job.id) == job


def test_a_jobs_file_of_an_earlier_release_gains_the_parts_version(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:  # the table as the release before this one made it
        db.execute("create table job_parts (id text not null, part integer not null, data blob not null, "
                   "primary key (id, part))")  # fmt: skip
        db.execute("insert into job_parts values ('old', 0, x'00')")
    store = SqliteJobStore(path)
    assert store.stored_parts("old") == {0: None}  # computed before versions were recorded: unknown
    store.put_part("old", 1, b"p", version=3)
    assert store.stored_parts("old") == {0: None, 1: 3}


# Run in a small child process, whose forks are cheap (forks of the test process, which may hold
# TensorFlow, cost tens of milliseconds each): `workers` processes open a new jobs file at once, 50 times.
OPEN_TOGETHER_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, tempfile
    from pathlib import Path
    from service.jobs.queue import JobQueue
    from service.jobs.stores import SqliteJobStore
    from service.settings import Settings

    def open_jobs(path, barrier, errors):
        barrier.wait(10)
        try:
            SqliteJobStore(Path(path))
            JobQueue(Settings(jobs_db=path, model_name="m"))
        except Exception as error:  # "database is locked" before the setup lock
            errors.put(repr(error))

    workers, context = int(sys.argv[1]), multiprocessing.get_context("fork")
    errors, exit_codes = context.Queue(), set()
    for attempt in range(50):
        path = tempfile.mkdtemp() + "/jobs.sqlite3"
        barrier = context.Barrier(workers)
        processes = [context.Process(target=open_jobs, args=(path, barrier, errors)) for _ in range(workers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(30)
            exit_codes.add(process.exitcode)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    print(sorted(exit_codes), failures)
    """
)


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_starting_together_on_a_new_jobs_file_never_fail(workers):
    """What each worker does at start with JOBS_DB, by `workers` processes at once on a new file, 50 times."""
    done = subprocess.run(
        [sys.executable, "-c", OPEN_TOGETHER_SCRIPT, str(workers)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.stdout.strip() == "[0] []", done.stdout + done.stderr[-2000:]
