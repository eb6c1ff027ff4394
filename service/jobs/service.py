"""What the jobs API needs of one worker: its store, its queue and its runner, built from the settings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import redis

from service.array_bytes import decode_arrays, encode_arrays
from service.backends.base import Arrays
from service.batching.batcher import Batcher
from service.errors import Conflict, NotFound
from service.jobs import records
from service.jobs.queue import JobQueue
from service.jobs.records import CANCELLED, DONE, FINAL_STATES, JobRecord
from service.jobs.runner import JobRunner, ModelLease
from service.jobs.stores import SQLITE_BUSY_TIMEOUT_S, RedisJobStore, SqliteJobStore, wall_clock
from service.settings import Settings


@dataclass
class Jobs:
    store: SqliteJobStore | RedisJobStore
    queue: JobQueue
    runner: JobRunner
    settings: Settings

    def submit(self, model: str, version: int, layout: str, inputs: Arrays, count: int, priority: int) -> JobRecord:
        """Store a job and queue it; its record."""
        job = JobRecord.new(model, version, layout, count, self.runner.part_instances, priority, wall_clock())
        self.store.add(job, encode_arrays(inputs))
        self.queue.enqueue(job.id, priority)
        return job

    def get(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}: it never existed, or its results were deleted after JOB_RESULTS_TTL_S")
        return job

    def result(self, job_id: str) -> tuple[JobRecord, Arrays]:
        """A done job's outputs, one row per instance in order; Conflict before it is done."""
        job = self.get(job_id)
        if job.state != DONE:
            reason = f": {job.error}" if job.error else ""
            raise Conflict(f"job {job_id} is {job.state} ({job.done} of {job.total} instances done){reason}")
        parts = self.store.parts(job_id)
        outputs = [decode_arrays(parts[part]) for part in range(job.chunks)]
        return job, {name: np.concatenate([part[name] for part in outputs]) for name in outputs[0]}

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job (it never runs) or a running one (it stops before its next batch)."""
        job = self.get(job_id)
        if job.state in FINAL_STATES:
            raise Conflict(f"job {job_id} is already {job.state}")
        cancelled = self.store.update(
            job_id, records.finish(None, CANCELLED, wall_clock(), self.settings.job_results_ttl_s)
        )
        return cancelled or self.get(job_id)


def build_jobs(settings: Settings, batcher: Batcher, lease_model: ModelLease | None = None) -> Jobs:
    """The worker's jobs: in Redis when REDIS_URL is set, else in the SQLite file JOBS_DB; its runner not started."""
    if settings.redis_url:
        timeout_s = SQLITE_BUSY_TIMEOUT_S  # the same bound as a SQLite file's lock
        store = RedisJobStore(redis.Redis.from_url(settings.redis_url, socket_timeout=timeout_s))
    else:
        store = SqliteJobStore(settings.jobs_db_path)
    queue = JobQueue(settings)
    runner = JobRunner(store, queue, batcher, settings.job_lease_s, settings.job_results_ttl_s, lease_model=lease_model)
    return Jobs(store, queue, runner, settings)
