"""The cache's two tiers: this worker's memory (cachetools), and Redis shared by every worker and pod.

An answer is one instance's output rows, keyed by name, kept by both tiers in the binary form of
service/array_bytes.py (the same dtype, shape and bytes restored). In memory as bytes rather than
arrays: the garbage collector does not walk bytes, and tens of thousands of cached dicts of arrays
slowed every full collection. A tier never fails a request: Redis errors and timeouts count as
misses and are logged.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence

import cachetools
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.telemetry import metrics

log = logging.getLogger(__name__)

ENTRY_OVERHEAD_BYTES = 100  # a local entry's key and the cache's bookkeeping, beside the answer's bytes
REDIS_KEY_PREFIX = b"tfms:answer:"
MAX_QUEUED_WRITES = 10_000  # answers waiting for the Redis writer: bounded, as every queue
ERROR_LOG_INTERVAL_S = 60.0  # a Redis outage is logged once a minute, not once a request


class LocalTier:
    """Least recently used answers up to `max_bytes`, each kept at most `ttl_s` (0: no limit); thread-safe."""

    name = "local"

    def __init__(self, max_bytes: int, ttl_s: float = 0.0, timer=time.monotonic):
        self.evictions = 0
        self.evictions_reported = 0  # to the metrics, by the ResultCaches of every version sharing this tier
        tier = self

        class Answers(cachetools.TTLCache if ttl_s > 0 else cachetools.LRUCache):
            def popitem(self):  # called only to make room: count the answers pushed out
                tier.evictions += 1
                return super().popitem()

        options = {"ttl": ttl_s, "timer": timer} if ttl_s > 0 else {}
        self._answers = Answers(maxsize=max_bytes, getsizeof=answer_bytes, **options)
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        with self._lock:
            return [self._answers.get(key) for key in keys]

    def put_many(self, answers: dict[bytes, bytes]) -> None:
        with self._lock:
            for key, answer in answers.items():
                with contextlib.suppress(ValueError):  # raised for an answer larger than the whole cache: not kept
                    self._answers[key] = answer

    @property
    def entries(self) -> int:
        return len(self._answers)

    @property
    def bytes(self) -> int:
        return int(self._answers.currsize)


def redis_client(url: str, timeout_s: float) -> redis.Redis:
    """A client that tries once: for a cache, a Redis that does not answer in time is a miss, not a wait."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


class RedisTier:
    """Answers in Redis under REDIS_KEY_PREFIX, each expiring after `ttl_s` (0: never; set Redis's maxmemory policy).

    A lookup is one round trip on the request's path. Writes are not: `put_many` queues them, and
    a writer sends all that are queued in one pipeline. On a loopback socket a round trip cost the
    worker about 250 us of CPU, as much as the rest of a miss's cache work, and under load the
    writer sends many answers per round trip (BENCHMARKS.md, "The result cache").
    """

    name = "redis"

    def __init__(self, client, ttl_s: float = 0.0):
        self._client = client
        self._ttl_ms = round(ttl_s * 1000) or None
        self._last_error_log = -ERROR_LOG_INTERVAL_S
        self.errors = 0
        self._queued: dict[bytes, bytes] = {}
        self._writing = False
        self._changed = threading.Condition()  # guards _queued and _writing
        self._writer: threading.Thread | None = None

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        try:
            return self._client.mget([REDIS_KEY_PREFIX + key for key in keys])
        except Exception as error:  # the cache must not fail the request: a miss
            self._failed("read", error)
            return [None] * len(keys)

    def put_many(self, answers: dict[bytes, bytes]) -> None:
        """Queue `answers` for the writer; beyond MAX_QUEUED_WRITES the oldest queued are forgotten."""
        with self._changed:
            self._queued.update(answers)
            for _ in range(len(self._queued) - MAX_QUEUED_WRITES):
                del self._queued[next(iter(self._queued))]
            self._changed.notify_all()
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queued, name="redis-cache-writer", daemon=True)
                self._writer.start()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued answer has been sent; False if that took longer than `timeout_s`."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queued and not self._writing, timeout_s)

    def _write_queued(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queued)
                answers, self._queued, self._writing = self._queued, {}, True
            try:
                pipeline = self._client.pipeline(transaction=False)
                for key, answer in answers.items():
                    pipeline.set(REDIS_KEY_PREFIX + key, answer, px=self._ttl_ms)
                pipeline.execute()
            except Exception as error:
                self._failed("write", error)
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()

    def _failed(self, what: str, error: Exception) -> None:
        self.errors += 1
        metrics.cache_errors.labels(self.name).inc()
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log.warning(
                "result cache: Redis %s failed (%s); counted as a miss (%d errors so far)", what, error, self.errors
            )


class RedisFigures:
    """A Prometheus collector of what Redis itself reports at scrape time: keys, memory, evictions."""

    def __init__(self, client):
        self._client = client

    def collect(self):
        try:
            info = self._client.info()
        except Exception:  # Redis unreachable: its figures are absent from this scrape
            return
        database = f"db{self._client.connection_pool.connection_kwargs.get('db', 0)}"
        keys = info.get(database, {}).get("keys", 0) if isinstance(info.get(database), dict) else 0
        values = {
            "model_server_cache_redis_keys": keys,
            "model_server_cache_redis_used_memory_bytes": info["used_memory"],
            "model_server_cache_redis_evicted_keys": info.get("evicted_keys", 0),
        }
        for name, kind, documentation in metrics.REDIS_FIGURES:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, documentation, value=values[name])


def answer_bytes(answer: bytes) -> int:
    return ENTRY_OVERHEAD_BYTES + len(answer)
