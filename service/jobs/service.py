"""What the jobs API needs of one worker: its store, its queue and its runner, built from the settings.

Every operation answers 503 with Retry-After while the store cannot be reached (Redis down, the
SQLite file locked past its busy timeout): the client's job is neither lost nor made twice by it,
and predict requests, which need no store, go on being served.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import redis

from service.array_bytes import decode_arrays, encode_arrays
from service.backends.base import Arrays
from service.errors import Conflict, Gone, NotFound, ServiceUnavailable
from service.jobs import records
from service.jobs.queue import JobQueue
from service.jobs.records import CANCELLED, DONE, FINAL_STATES, JobRecord, generation_of
from service.jobs.runner import BatcherFor, JobRunner, ModelLease
from service.jobs.stores import (
    SQLITE_BUSY_TIMEOUT_S,
    Durability,
    RedisJobStore,
    SqliteJobStore,
    store_unreachable,
    wall_clock,
)
from service.settings import Settings


@dataclass
class Jobs:
    store: SqliteJobStore | RedisJobStore
    queue: JobQueue
    runner: JobRunner
    settings: Settings

    def submit(
        self, model: str, version: int, layout: str, inputs: Arrays, count: int, priority: int, pinned: bool = False
    ) -> JobRecord:
        """Store a job and queue it; its record. A `pinned` job runs on `version` only (its request named it)."""
        with self._reachable("the job was not queued"):
            job = JobRecord.new(
                model, version, layout, count, self.runner.part_instances(model), priority, wall_clock(),
                generation=self.store.generation(), pinned=pinned,
            )  # fmt: skip
            self.store.add(job, encode_arrays(inputs))
            self.queue.enqueue(job.id, priority)
        self.runner.wake()
        return job

    def get(self, job_id: str) -> JobRecord:
        """The job's record; Gone when its store was emptied since it was accepted, NotFound when it is unknown."""
        with self._reachable("the job is kept; ask again"):
            job = self.store.get(job_id)
            if job is None and generation_of(job_id) not in (None, self.store.generation()):
                raise Gone(
                    f"job {job_id!r} was lost: its store, {self.store.durability().how}, was emptied after the job "
                    "was accepted; submit it again"
                )
        if job is None:
            raise NotFound(f"no job {job_id!r}: it never existed, or its results were deleted after JOB_RESULTS_TTL_S")
        return job

    def describe(self, job: JobRecord) -> dict:
        """What the jobs API shows of a job: its record, and the version that computed each stored part."""
        with self._reachable("the job is kept; ask again"):
            return job.describe(self.store.stored_parts(job.id))

    def result(self, job_id: str) -> tuple[JobRecord, Arrays]:
        """A done job's outputs, one row per instance in order; Conflict before it is done."""
        job = self.get(job_id)
        if job.state != DONE:
            reason = f": {job.error}" if job.error else ""
            raise Conflict(f"job {job_id} is {job.state} ({job.done} of {job.total} instances done){reason}")
        with self._reachable("the job is kept; ask again"):
            parts = self.store.parts(job_id)
        outputs = [decode_arrays(parts[part]) for part in range(job.chunks)]
        return job, {name: np.concatenate([part[name] for part in outputs]) for name in outputs[0]}

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job (it never runs) or a running one (it stops before its next batch)."""
        job = self.get(job_id)
        if job.state in FINAL_STATES:
            raise Conflict(f"job {job_id} is already {job.state}")
        with self._reachable("the job was not cancelled"):
            cancelled = self.store.update(
                job_id, records.finish(None, CANCELLED, wall_clock(), self.settings.job_results_ttl_s)
            )
        return cancelled or self.get(job_id)

    @contextlib.contextmanager
    def _reachable(self, consequence: str) -> Iterator[None]:
        """503 with Retry-After, saying `consequence`, while the store cannot be reached."""
        try:
            yield
        except (redis.RedisError, sqlite3.OperationalError) as error:
            if not store_unreachable(error):
                raise
            where = "Redis" if isinstance(self.store, RedisJobStore) else f"the jobs file {self.settings.jobs_db_path}"
            message = f"the jobs' store ({where}) cannot be reached: {type(error).__name__}: {error}; {consequence}"
            raise ServiceUnavailable(message, reason="jobs_store_unreachable") from None


def build_jobs(
    settings: Settings,
    batcher_for: BatcherFor,
    lease_model: ModelLease | None = None,
    on_durability: Callable[[Durability], None] = lambda durability: None,
) -> Jobs:
    """The worker's jobs: in Redis when REDIS_URL is set, else in the SQLite file JOBS_DB; its runner not started.

    A job's parts run through its model's batcher (`batcher_for`), on the version `lease_model` holds.

    `on_durability` is told how durable the store is at start and whenever that changes.
    """
    if settings.redis_url:
        timeout_s = SQLITE_BUSY_TIMEOUT_S  # the same bound as a SQLite file's lock
        store = RedisJobStore(redis.Redis.from_url(settings.redis_url, socket_timeout=timeout_s))
    else:
        store = SqliteJobStore(settings.jobs_db_path)
    queue = JobQueue(settings)
    runner = JobRunner(
        store, queue, batcher_for, settings.job_lease_s, settings.job_results_ttl_s,
        lease_model=lease_model, on_durability=on_durability,
    )  # fmt: skip
    return Jobs(store, queue, runner, settings)
