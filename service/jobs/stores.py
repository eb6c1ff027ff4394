"""Where jobs live: their records, inputs and results, in the SQLite file or the Redis huey also uses.

Both stores offer the same few operations; `update` applies one of records.py's changes
atomically (SQLite: an immediate transaction; Redis: WATCH and MULTI), which is all the locking
jobs need. A finished job is deleted once its `keep_until` passes: by `purge` in SQLite, by the
keys' own expiry in Redis.

Each store has a generation, a random token kept beside the jobs and part of every job's id: a
store emptied behind the service's back (a Redis without persistence restarted, a jobs file
replaced) has a new one, so a job it lost is told apart from one that never existed. And each
says how long it keeps what it holds (`durability`): jobs are as durable as their store.
"""

from __future__ import annotations

import contextlib
import fcntl
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from service.jobs.records import FINAL_STATES, QUEUED, RUNNING, JobRecord

Change = Callable[[JobRecord], JobRecord | None]

SQLITE_BUSY_TIMEOUT_S = 10.0  # other workers' transactions are short: waiting longer means something is stuck
_SCHEMA = (
    "create table if not exists jobs (id text primary key, state text not null, keep_until real, record blob not null)",
    "create table if not exists job_inputs (id text primary key, data blob not null)",
    "create table if not exists job_parts (id text not null, part integer not null, data blob not null, "
    "version integer, primary key (id, part))",
    "create index if not exists jobs_by_state on jobs (state)",
    "create table if not exists job_store (name text primary key, value text not null)",
)
GENERATION_HEX = 8  # the generation's length in a job's id


def new_generation() -> str:
    return secrets.token_hex(GENERATION_HEX // 2)


@dataclass(frozen=True)
class Durability:
    """Whether a store keeps its jobs across its own restart (None: it cannot tell), and how, in words."""

    persistent: bool | None
    how: str


@contextlib.contextmanager
def setup_lock(path: Path) -> Iterator[None]:
    """Held while a process sets a jobs file up: one at a time, whatever the number of workers or pods.

    Switching a new file to the write-ahead log takes SQLite's exclusive lock at once, with no busy
    wait: workers starting together on a new file would get "database is locked" (and stop the start).
    """
    with open(path.with_name(path.name + ".setup-lock"), "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


class SqliteJobStore:
    """Jobs in tables of a SQLite file (write-ahead log, so readers never wait for the writer)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = str(path)
        with setup_lock(path), self._connection() as db:
            db.execute("pragma journal_mode=wal")
            for statement in _SCHEMA:
                db.execute(statement)
            columns = {row[1] for row in db.execute("pragma table_info(job_parts)")}
            if "version" not in columns:  # a file of an earlier release: its parts' version is unknown (null)
                db.execute("alter table job_parts add column version integer")

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

    def put_part(self, job_id: str, part: int, data: bytes, version: int) -> None:
        """Store a part of the result, computed by model `version` (one row: never a part without its version)."""
        with self._connection() as db:
            db.execute(
                "insert or replace into job_parts (id, part, data, version) values (?, ?, ?, ?)",
                (job_id, part, data, version),
            )

    def parts(self, job_id: str) -> dict[int, bytes]:
        with self._connection() as db:
            return dict(db.execute("select part, data from job_parts where id = ?", (job_id,)).fetchall())

    def stored_parts(self, job_id: str) -> dict[int, int | None]:
        """The parts stored and the version that computed each, without reading their data."""
        with self._connection() as db:
            return dict(db.execute("select part, version from job_parts where id = ?", (job_id,)).fetchall())

    def active(self) -> list[JobRecord]:
        with self._connection() as db:
            rows = db.execute("select record from jobs where state in (?, ?)", (QUEUED, RUNNING)).fetchall()
        return [JobRecord.from_bytes(row[0]) for row in rows]

    def generation(self) -> str:
        """This file's generation, made when the file was."""
        with self._transaction() as db:
            db.execute("insert or ignore into job_store values ('generation', ?)", (new_generation(),))
            return db.execute("select value from job_store where name = 'generation'").fetchone()[0]

    def durability(self) -> Durability:
        return Durability(True, f"the SQLite file {self._path}")

    def purge(self, now: float) -> int:
        """Delete the finished jobs kept long enough; how many."""
        with self._transaction() as db:
            expired = [row[0] for row in db.execute("select id from jobs where keep_until < ?", (now,)).fetchall()]
            for table in ("jobs", "job_inputs", "job_parts"):
                db.executemany(f"delete from {table} where id = ?", [(job_id,) for job_id in expired])
        return len(expired)


class RedisJobStore:
    """Jobs in Redis: a key per record, its inputs, its parts and their versions (hashes), and the unfinished jobs."""

    ACTIVE = b"tfms:jobs:active"
    GENERATION = b"tfms:jobs:generation"

    def __init__(self, client: redis.Redis):
        self._client = client

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str, str, str]:
        """The record's key, then its inputs', its parts' and their versions' (all expire with the record)."""
        key = f"tfms:job:{job_id}"
        return key, f"{key}:inputs", f"{key}:parts", f"{key}:part_versions"

    def add(self, job: JobRecord, inputs: bytes) -> None:
        record, inputs_key, *_ = self._keys(job.id)
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

    def put_part(self, job_id: str, part: int, data: bytes, version: int) -> None:
        """Store a part of the result, computed by model `version` (one transaction: never a part without it)."""
        _, _, parts, versions = self._keys(job_id)
        pipeline = self._client.pipeline(transaction=True)
        pipeline.hset(parts, str(part), data).hset(versions, str(part), version)
        pipeline.execute()

    def parts(self, job_id: str) -> dict[int, bytes]:
        return {int(part): data for part, data in self._client.hgetall(self._keys(job_id)[2]).items()}

    def stored_parts(self, job_id: str) -> dict[int, int | None]:
        """The parts stored and the version that computed each, without reading their data."""
        _, _, parts, versions = self._keys(job_id)
        pipeline = self._client.pipeline(transaction=False)
        numbers, computed_by = pipeline.hkeys(parts).hgetall(versions).execute()
        return {int(part): _int_or_none(computed_by.get(part)) for part in numbers}

    def active(self) -> list[JobRecord]:
        ids = [job_id.decode() for job_id in self._client.smembers(self.ACTIVE)]
        records = self._client.mget([self._keys(job_id)[0] for job_id in ids]) if ids else []
        return [JobRecord.from_bytes(data) for data in records if data is not None]

    def purge(self, now: float) -> int:
        return 0  # finished jobs' keys expire by themselves

    def generation(self) -> str:
        """This Redis database's generation: gone with everything else when it restarts without persistence."""
        pipeline = self._client.pipeline(transaction=True)
        _, generation = pipeline.set(self.GENERATION, new_generation(), nx=True).get(self.GENERATION).execute()
        return generation.decode()

    def durability(self) -> Durability:
        """From Redis's own configuration: RDB snapshots (`save`) or the append-only file keep data across a restart."""
        try:
            config = {**self._client.config_get("save"), **self._client.config_get("appendonly")}
        except redis.ResponseError as error:  # CONFIG is often disabled on managed Redis
            return Durability(None, f"Redis, which does not say whether it persists (CONFIG GET: {error})")
        if config.get("appendonly") == "yes":
            return Durability(True, "Redis with its append-only file")
        if config.get("save"):
            return Durability(True, f"Redis with snapshots (save {config['save']}; a crash loses the writes since)")
        return Durability(False, "Redis without persistence (save '' and appendonly no): a restart loses every job")


# What SQLite says of a file it cannot use now (another process holds it, the disk failed), as opposed to our faults.
SQLITE_UNREACHABLE = ("database is locked", "unable to open database file", "disk I/O error")


def store_unreachable(error: BaseException) -> bool:
    """Whether `error` says the store cannot be reached (Redis down or loading, the SQLite file unusable)."""
    if isinstance(error, redis.ConnectionError | redis.TimeoutError):
        return True  # BusyLoadingError (Redis reading its data after a restart) is a ConnectionError
    return isinstance(error, sqlite3.OperationalError) and str(error).startswith(SQLITE_UNREACHABLE)


def _int_or_none(value: bytes | None) -> int | None:
    return int(value) if value is not None else None


def wall_clock() -> float:
    """Jobs' times are Unix times: they outlive processes and are shown to clients."""
    return time.time()
