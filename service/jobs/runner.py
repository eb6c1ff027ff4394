"""One worker's share of the jobs: take their tasks from the queue and serve them at job priority.

A job runs in parts of PASSES_PER_PART full batches. Each part's distinct instances go to the
worker's batcher as background work (service/batching/background.py): they fill the room online
batches leave and run alone only while online traffic is quiet, so a job never delays online
requests. Each part's result is stored as soon as it is computed: a job that stops (its worker
shuts down, fails, or dies) resumes at its first missing part, wherever it runs next.

While a part runs, the runner renews its claim (the lease) and looks for a cancel once a pass;
a cancel stops the part before its next batch. The same loop also resumes the jobs whose
worker died (their lease lapsed) and deletes finished jobs kept long enough.

Each part runs on the version the job was accepted for while that version serves. Once it is
retired (a new version published under the `latest` policy), the job's other parts run on the
version that replaced it, and each stored part keeps the version that computed it, which the
job's status lists. A job that named its version runs on no other: it fails, saying so.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import partial

import numpy as np
from huey.exceptions import RetryTask

from service.array_bytes import decode_arrays, encode_arrays
from service.backends.base import Arrays, ModelInputs, ServedModel
from service.batching.background import JOB_PRIORITY, BackgroundWork, Cancelled
from service.batching.batcher import Batcher
from service.batching.bulk import unique_instances
from service.batching.requests import BatcherClosed
from service.errors import NotFound
from service.jobs import records
from service.jobs.queue import JobQueue
from service.jobs.records import DONE, FAILED, QUEUED, RUNNING, JobRecord
from service.jobs.stores import Durability, store_unreachable, wall_clock
from service.threads import spawn

log = logging.getLogger(__name__)

PASSES_PER_PART = 16  # a part is this many full batches: stored at once, and lost at most when a worker dies
# How soon a worker with nothing to do looks at the queue again: at first, then twice as long each time it
# finds nothing, up to the upkeep's interval (JOB_LEASE_S / 3). A job submitted to this worker wakes it at once.
IDLE_POLL_S = 0.25


# (model, version: None for the latest) -> the model version, held while a part runs; NotFound when none serves
ModelLease = Callable[[str, int | None], AbstractContextManager[ServedModel]]
BatcherFor = Callable[[str], Batcher]  # a model's name -> the batcher its parts run through; NotFound when not served


class JobCannotRun(Exception):
    """The job's model or pinned version is no longer served: it fails at once, no retry spent."""


class JobRunner:
    """A job's parts run through its model's batcher (`batcher_for(model)`); `lease_model(model, version)` holds
    the version a part runs on while it runs (None: the batcher's forward pass takes plain arrays, and a part is
    said to be computed by the job's version).
    """

    def __init__(
        self,
        store,
        queue: JobQueue,
        batcher_for: BatcherFor,
        lease_s: float,
        keep_s: float,
        clock=wall_clock,
        lease_model: ModelLease | None = None,
        on_durability: Callable[[Durability], None] = lambda durability: None,
    ):
        self._store, self._queue, self._batcher_for = store, queue, batcher_for
        self._lease_model = lease_model
        self._on_durability = on_durability
        self._durability: Durability | None = None
        self._lease_s, self._keep_s, self._clock = lease_s, keep_s, clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._stopping = False
        self._woken = threading.Event()  # made in the worker, so a greenlet's event under gevent
        queue.handler = self.run

    def part_instances(self, model: str) -> int:
        """The instances in each part of a job on `model`: PASSES_PER_PART of its full batches."""
        return PASSES_PER_PART * self._batcher_for(model).preferred_batch_size

    def start(self) -> None:
        spawn(self._loop, "job-runner")

    def stop(self) -> None:
        """Take no more tasks; the part under way finishes (the batcher runs it), then its job is queued again."""
        self._stopping = True
        self._woken.set()

    def wake(self) -> None:
        """A job was queued here: look at the queue now, however long the runner meant to wait."""
        self._woken.set()

    def _loop(self) -> None:
        next_upkeep, idle_s = 0.0, IDLE_POLL_S
        while not self._stopping:
            try:
                if self._clock() >= next_upkeep:
                    self.upkeep()
                    next_upkeep = self._clock() + self._lease_s / 3
                task = self._queue.next_task()
                if task is None:
                    self._woken.wait(idle_s)
                    idle_s = IDLE_POLL_S if self._woken.is_set() else min(2 * idle_s, self._lease_s / 3)
                    self._woken.clear()
                else:
                    idle_s = IDLE_POLL_S
                    self._queue.execute(task)
            except Exception as error:  # the store or the queue failed: log it and keep the loop alive
                unreachable = store_unreachable(error)
                log.error(
                    "job runner: %s; retrying in %.0f s",
                    f"the store cannot be reached ({type(error).__name__}: {error})" if unreachable else "failed",
                    self._lease_s / 3, exc_info=not unreachable,
                )  # fmt: skip
                time.sleep(self._lease_s / 3)

    def run(self, job_id: str, retries_left: int) -> None:
        """huey's task: run the job if it is queued (or its worker died); resume it at its first missing part."""
        job = self._store.update(job_id, records.claim(self.owner, self._clock(), self._lease_s))
        if job is None:
            return  # done, cancelled, or running in a live worker: nothing to do
        log.info("job %s: running %d instances from part %d", job_id, job.total, job.done // job.chunk)
        try:
            self._run_parts(job)
        except Cancelled:
            if self._store.get(job_id) is None:
                log.error("job %s was lost: its record left the store while it ran (%s)", job_id, self._durability)
            else:
                log.info("job %s: cancelled", job_id)
        except JobCannotRun as error:
            log.warning("job %s failed: %s", job_id, error)
            self._finish(job_id, FAILED, str(error))
        except BatcherClosed:  # this worker is stopping: another one resumes the job, no retry spent
            self._store.update(job_id, records.requeue(self.owner))
            raise RetryTask() from None
        except Exception as error:
            if retries_left:
                log.warning("job %s failed (%s); huey runs it again (%d retries left)", job_id, error, retries_left)
                self._store.update(job_id, records.requeue(self.owner))
                raise
            log.exception("job %s failed", job_id)
            self._finish(job_id, FAILED, f"{type(error).__name__}: {error}")
        else:
            self._finish(job_id, DONE)

    def upkeep(self) -> None:
        """Check the store's durability; resume the jobs whose worker died, queue again those whose task was lost,
        delete expired ones."""
        self.check_durability()
        now = self._clock()
        self._store.purge(now)
        waiting = None
        for job in self._store.active():
            if job.state == RUNNING and job.lease_until is not None and job.lease_until < now:
                lapsed = self._store.update(job.id, records.lapsed(now, self._keep_s))
                if lapsed is not None and lapsed.state == QUEUED:
                    log.warning("job %s: its worker %s stopped renewing its claim; resuming it", job.id, job.owner)
                    self._queue.enqueue(job.id, job.priority)
            elif job.state == QUEUED and job.created_at < now - self._lease_s:
                waiting = self._queue.waiting_job_ids() if waiting is None else waiting
                if job.id not in waiting:  # taken from the queue by a worker that died before claiming it
                    self._queue.enqueue(job.id, job.priority)

    def check_durability(self) -> Durability:
        """How durable the store is; logged (a warning when it keeps nothing across a restart) when it changes."""
        durability = self._store.durability()
        if durability != self._durability:
            self._durability = durability
            if durability.persistent:
                log.info("jobs are kept in %s", durability.how)
            else:
                log.warning("jobs are kept in %s; accepted jobs may be lost (docs/operations.md)", durability.how)
            self._on_durability(durability)
        return durability

    def _finish(self, job_id: str, state: str, error: str | None = None) -> None:
        self._store.update(job_id, records.finish(self.owner, state, self._clock(), self._keep_s, error))

    def _run_parts(self, job: JobRecord) -> None:
        inputs = decode_arrays(self._store.inputs(job.id))
        stored = self._store.stored_parts(job.id)
        done = sum(job.part_size(part) for part in stored)
        for part in range(job.chunks):
            if part in stored:
                continue
            start, size = part * job.chunk, job.part_size(part)
            rows = {name: array[start : start + size] for name, array in inputs.items()}
            result, version = self._serve(job, rows, size, done)
            self._store.put_part(job.id, part, encode_arrays(_fixed_width(result)), version)
            done += size
            if not self._renew(job, done):
                raise Cancelled("cancelled")

    def _serve(self, job: JobRecord, rows: Arrays, count: int, done_before: int) -> tuple[Arrays, int]:
        """One part through the batcher at job priority, its distinct instances computed once; and its version."""
        unique = unique_instances(rows, count)
        with self._lease_for(job) as model:
            batcher = self._batcher_for(job.model)  # its model is served: `_lease_for` said so
            payload_of = partial(ModelInputs, model) if model is not None else lambda part: part
            work = BackgroundWork(unique.inputs, unique.count, JOB_PRIORITY, payload_of=payload_of)
            batcher.submit_background(work)
            outcome = self._wait(job, work, batcher, count, unique.count, done_before)
            version = model.version if model is not None else job.version
        if unique.positions is None:
            return outcome.result, version
        return {name: array[unique.positions] for name, array in outcome.result.items()}, version

    @contextmanager
    def _lease_for(self, job: JobRecord) -> Iterator[ServedModel | None]:
        """The job's version while it serves; once retired, the latest (unless the job named its version)."""
        if self._lease_model is None:
            try:
                self._batcher_for(job.model)
            except NotFound as gone:
                raise JobCannotRun(f"{gone.message}: the job's model is no longer served") from None
            yield None
            return
        with ExitStack() as held:
            try:
                model = held.enter_context(self._lease_model(job.model, job.version))
            except NotFound as retired:
                if job.pinned:
                    message = f"{retired.message}; this job named version {job.version}, and runs on no other"
                    raise JobCannotRun(message) from None
                try:
                    model = held.enter_context(self._lease_model(job.model, None))
                except NotFound as gone:
                    raise JobCannotRun(f"{gone.message}: the job's model is no longer served") from None
                log.debug("job %s: version %d is retired; a part runs on %d", job.id, job.version, model.version)
            yield model

    def _wait(
        self, job: JobRecord, work: BackgroundWork, batcher: Batcher, count: int, unique_count: int, done_before: int
    ):
        while True:
            try:
                return work.wait(max(batcher.full_pass_seconds(), 0.001))
            except TimeoutError:  # a pass went by: renew the claim, and stop if the job was cancelled
                if not self._renew(job, done_before + work.done * count // unique_count):
                    work.cancel()

    def _renew(self, job: JobRecord, done: int) -> bool:
        """Record progress and renew the lease; False once the job is no longer this worker's (cancelled)."""
        return self._store.update(job.id, records.progress(self.owner, done, self._clock(), self._lease_s)) is not None


def _fixed_width(arrays: Arrays) -> Arrays:
    """String outputs (Python objects) as numpy's fixed-width bytes, which array_bytes writes without pickle."""
    return {
        name: np.array([_as_bytes(value) for value in array.ravel()]).reshape(array.shape)
        if array.dtype == object
        else array
        for name, array in arrays.items()
    }


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
