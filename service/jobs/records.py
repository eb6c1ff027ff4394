"""A job's record: its state, progress and times, and the changes a job goes through.

States: queued -> running -> done | failed | cancelled; running -> queued again when its worker
stops (shutdown) or dies (its lease runs out). Every change is a pure function from the record
to a new record, or None when it does not apply; a store applies it atomically (stores.py), so
two workers never both claim one job and a cancel never loses to a progress update.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL_STATES = (DONE, FAILED, CANCELLED)
MAX_RESUMES = 3  # a job whose worker died this many times fails instead of killing another


@dataclass(frozen=True)
class JobRecord:
    id: str
    model: str
    version: int
    layout: str  # the request's layout ("row" or "columnar"): the result answers in the same one
    total: int  # instances
    chunk: int  # instances per stored part of the result
    priority: int
    created_at: float  # Unix time
    state: str = QUEUED
    done: int = 0  # instances answered
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    owner: str | None = None  # the worker running it
    lease_until: float | None = None
    resumes: int = 0  # times it went back to the queue after its worker died
    keep_until: float | None = None  # once final: when it is deleted
    pinned: bool = False  # it named its version: it runs on no other

    @classmethod
    def new(
        cls,
        model: str,
        version: int,
        layout: str,
        total: int,
        chunk: int,
        priority: int,
        now: float,
        generation: str = "",
        **fields,
    ) -> JobRecord:
        """A queued job, its id prefixed with its store's `generation` (`generation_of` reads it back)."""
        job_id = f"{generation}-{uuid.uuid4().hex}" if generation else uuid.uuid4().hex
        return cls(job_id, model, version, layout, total, chunk, priority, now, **fields)

    @property
    def chunks(self) -> int:
        return -(-self.total // self.chunk)

    def part_size(self, part: int) -> int:
        """Instances in part number `part` (the last may be short)."""
        return min(self.chunk, self.total - part * self.chunk)

    def to_bytes(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> JobRecord:
        return cls(**orjson.loads(data))

    def describe(self, part_versions: dict[int, int] | None = None) -> dict:
        """The job as `GET /v1/jobs/<id>` shows it; `part_versions`: the version that computed each stored part.

        `version` is the one it was accepted for. When that one was retired while the job waited
        or ran, its other parts ran on the version that replaced it: `part_versions` lists, for
        each part of `part_instances` instances in order, the version that computed it (null: not yet).
        """
        computed = part_versions or {}
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "pinned": self.pinned,
            "part_instances": self.chunk,
            "part_versions": [computed.get(part) for part in range(self.chunks)],
            "state": self.state,
            "progress": {"done": self.done, "total": self.total},
            "priority": self.priority,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
        }


JOB_ID = re.compile(r"(?:(?P<generation>[0-9a-f]{8})-)?[0-9a-f]{32}")


def generation_of(job_id: str) -> str | None:
    """The generation of the store that accepted the job `job_id` (None for an id without one)."""
    matched = JOB_ID.fullmatch(job_id)
    return matched["generation"] if matched else None


def claim(owner: str, now: float, lease_s: float):
    """Queued (or running with a lapsed lease): running, held by `owner` until `now + lease_s`."""

    def change(job: JobRecord) -> JobRecord | None:
        lapsed = job.state == RUNNING and job.lease_until is not None and job.lease_until < now
        if job.state != QUEUED and not lapsed:
            return None
        started = job.started_at or now
        return dataclasses.replace(job, state=RUNNING, owner=owner, lease_until=now + lease_s, started_at=started)

    return change


def progress(owner: str, done: int, now: float, lease_s: float):
    """`done` instances answered so far; the lease renewed. Only while `owner` holds the job."""

    def change(job: JobRecord) -> JobRecord | None:
        if job.state != RUNNING or job.owner != owner:
            return None
        return dataclasses.replace(job, done=done, lease_until=now + lease_s)

    return change


def finish(owner: str | None, state: str, now: float, keep_s: float, error: str | None = None):
    """Done, failed or cancelled, kept `keep_s` from now; by its owner, or by anyone when `owner` is None."""

    def change(job: JobRecord) -> JobRecord | None:
        if job.state in FINAL_STATES or (owner is not None and job.owner != owner):
            return None
        return dataclasses.replace(
            job, state=state, error=error, finished_at=now, keep_until=now + keep_s, owner=None, lease_until=None
        )

    return change


def requeue(owner: str | None, died: bool = False):
    """Back to the queue, to resume where it stopped: its worker is stopping, or (`died`) its lease lapsed."""

    def change(job: JobRecord) -> JobRecord | None:
        if job.state != RUNNING or (owner is not None and job.owner != owner):
            return None
        return dataclasses.replace(
            job, state=QUEUED, owner=None, lease_until=None, resumes=job.resumes + (1 if died else 0)
        )

    return change


def lapsed(now: float, keep_s: float) -> Callable[[JobRecord], JobRecord | None]:
    """A running job whose lease lapsed: back to the queue, or failed once its workers died MAX_RESUMES times."""

    def change(job: JobRecord) -> JobRecord | None:
        if job.state != RUNNING or job.lease_until is None or job.lease_until >= now:
            return None
        if job.resumes + 1 >= MAX_RESUMES:
            error = f"its worker died {job.resumes + 1} times while running it"
            return finish(None, FAILED, now, keep_s, error)(job)
        return requeue(None, died=True)(job)

    return change
