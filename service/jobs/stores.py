"""Where jobs live: their records, inputs and results, in the SQLite file or the Redis huey also uses.

Both stores offer the same few operations; `update` applies one of records.py's changes
atomically (SQLite: an immediate transaction; Redis: WATCH and MULTI), which is all the locking
jobs need. A finished job is deleted once its `keep_until` passes: by `purge` in SQLite, by the
keys' own expiry in Redis.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from service.jobs.records import FINAL_STATES, QUEUED, RUNNING, JobRecord

Change = Callable[[JobRecord], JobRecord | None]

SQLITE_BUSY_TIMEOUT_S = 10.0  # other workers' transactions are short: waiting longer means something is stuck
_SCHEMA = (
    "create table if not exists jobs (id text primary key, state text not null, keep_until real, record blob not null)",
    "create table if not exists job_inputs (id text primary key, data blob not null)",
    "create table if not exists job_parts (id text not null, part integer not null, data blob not null, "
    "primary key (id, part))",
    "create index if not exists jobs_by_state on jobs (state)",
)


class SqliteJobStore:
    """Jobs in tables of a SQLite file (write-ahead log, so readers never wait for the writer)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = str(path)
        with self._connection() as db:
            db.execute("pragma journal_mode=wal")
            for statement in _SCHEMA:
                db.execute(statement)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation: workers are processes, and gthread's request threads share none."""
        db = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate transaction: it holds the write lock from its start, so a read-modify-write is atomic."""
        with self._connection() as db:
            db.execute("begin immediate")
            try:
                yield db
            except BaseException:
                db.execute("rollback")
                raise
            db.execute("commit")

    def add(self, job: JobRecord, inputs: bytes) -> None:
        with self._transaction() as db:
            db.execute("insert into job_inputs values (?, ?)", (job.id, inputs))
            db.execute("insert into jobs values (?, ?, ?, ?)", (job.id, job.state, job.keep_until, job.to_bytes()))

    def get(self, job_id: str) -> JobRecord | None:
        with self._connection() as db:
            row = db.execute("select record from jobs where id = ?", (job_id,)).fetchone()
        return JobRecord.from_bytes(row[0]) if row else None

    def update(self, job_id: str, change: Change) -> JobRecord | None:
        with self._transaction() as db:
            row = db.execute("select record from jobs where id = ?", (job_id,)).fetchone()
            changed = change(JobRecord.from_bytes(row[0])) if row else None
            if changed is not None:
                db.execute(
                    "update jobs set state = ?, keep_until = ?, record = ? where id = ?",
                    (changed.state, changed.keep_until, changed.to_bytes(), job_id),
                )
        return changed

    def inputs(self, job_id: str) -> bytes | None:
        with self._connection() as db:
            row = db.execute("select data from job_inputs where id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def put_part(self, job_id: str, part: int, data: bytes) -> None:
        with self._connection() as db:
            db.execute("insert or replace into job_parts values (?, ?, ?)", (job_id, part, data))

    def parts(self, job_id: str) -> dict[int, bytes]:
        with self._connection() as db:
            return dict(db.execute("select part, data from job_parts where id = ?", (job_id,)).fetchall())

    def stored_parts(self, job_id: str) -> set[int]:
        """The numbers of the parts stored, without reading their data."""
        with self._connection() as db:
            return {row[0] for row in db.execute("select part from job_parts where id = ?", (job_id,)).fetchall()}

    def active(self) -> list[JobRecord]:
        with self._connection() as db:
            rows = db.execute("select record from jobs where state in (?, ?)", (QUEUED, RUNNING)).fetchall()
        return [JobRecord.from_bytes(row[0]) for row in rows]

    def purge(self, now: float) -> int:
        """Delete the finished jobs kept long enough; how many."""
        with self._transaction() as db:
            expired = [row[0] for row in db.execute("select id from jobs where keep_until < ?", (now,)).fetchall()]
            for table in ("jobs", "job_inputs", "job_parts"):
                db.executemany(f"delete from {table} where id = ?", [(job_id,) for job_id in expired])
        return len(expired)


class RedisJobStore:
    """Jobs in Redis: a key per record, its inputs and its parts (a hash), and the set of unfinished jobs."""

    ACTIVE = b"tfms:jobs:active"

    def __init__(self, client: redis.Redis):
        self._client = client

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str, str]:
        return f"tfms:job:{job_id}", f"tfms:job:{job_id}:inputs", f"tfms:job:{job_id}:parts"

    def add(self, job: JobRecord, inputs: bytes) -> None:
        record, inputs_key, _ = self._keys(job.id)
        pipeline = self._client.pipeline(transaction=True)
        pipeline.set(inputs_key, inputs).set(record, job.to_bytes()).sadd(self.ACTIVE, job.id)
        pipeline.execute()

    def get(self, job_id: str) -> JobRecord | None:
        data = self._client.get(self._keys(job_id)[0])
        return JobRecord.from_bytes(data) if data is not None else None

    def update(self, job_id: str, change: Change) -> JobRecord | None:
        keys = self._keys(job_id)
        with self._client.pipeline(transaction=True) as pipeline:
            while True:
                try:
                    pipeline.watch(keys[0])
                    data = pipeline.get(keys[0])
                    changed = change(JobRecord.from_bytes(data)) if data is not None else None
                    if changed is None:
                        pipeline.unwatch()
                        return None
                    pipeline.multi()
                    pipeline.set(keys[0], changed.to_bytes())
                    if changed.state in FINAL_STATES:
                        for key in keys:
                            pipeline.expireat(key, int(changed.keep_until) + 1)
                        pipeline.srem(self.ACTIVE, job_id)
                    pipeline.execute()
                    return changed
                except redis.WatchError:  # changed meanwhile by another worker: read it again
                    continue

    def inputs(self, job_id: str) -> bytes | None:
        return self._client.get(self._keys(job_id)[1])

    def put_part(self, job_id: str, part: int, data: bytes) -> None:
        self._client.hset(self._keys(job_id)[2], str(part), data)

    def parts(self, job_id: str) -> dict[int, bytes]:
        return {int(part): data for part, data in self._client.hgetall(self._keys(job_id)[2]).items()}

    def stored_parts(self, job_id: str) -> set[int]:
        return {int(part) for part in self._client.hkeys(self._keys(job_id)[2])}

    def active(self) -> list[JobRecord]:
        ids = [job_id.decode() for job_id in self._client.smembers(self.ACTIVE)]
        records = self._client.mget([self._keys(job_id)[0] for job_id in ids]) if ids else []
        return [JobRecord.from_bytes(data) for data in records if data is not None]

    def purge(self, now: float) -> int:
        return 0  # finished jobs' keys expire by themselves


def wall_clock() -> float:
    """Jobs' times are Unix times: they outlive processes and are shown to clients."""
    return time.time()
