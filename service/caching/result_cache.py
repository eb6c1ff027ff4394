"""Look up a request's instances in the cache's tiers, and keep the answers computed for the rest.

The local tier is asked first; what it misses is asked of Redis in one round trip, and Redis's
hits are copied into the local tier. Computed answers go into both (into Redis by its writer, off
the request's path). Every lookup and store is counted by tier (service.telemetry.metrics), in
instances.

Once a request of up to a batch has been answered wholly from the cache, the local tier also keeps
its encoded answer, keyed by its body's bytes. A repeat of that body is answered without decoding
it, keying its instances or encoding the answer: on `models/heavy.keras` a hit took 125 us of CPU
in-process instead of 290, and a hit's CPU is what limits a cached server (BENCHMARKS.md, "The
result cache"). Keeping only bodies seen before keeps a body seen once as cheap as without it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from service.array_bytes import decode_arrays, encode_arrays
from service.backends.base import Arrays, ServedModel
from service.backends.footprint import model_digest
from service.caching.keys import DIGEST_BYTES, instance_keys, model_identity
from service.caching.tiers import LocalTier, RedisFigures, RedisTier, redis_client
from service.settings import Settings
from service.telemetry import metrics

# A Redis read or write may take this many full passes before it counts as failed: beyond that, computing is cheaper.
REDIS_TIMEOUT_PASSES = 4


@dataclass
class Lookup:
    """What the cache holds of a request's instances: the answers found, by position, and the positions missing."""

    keys: list[bytes]
    found: dict[int, Arrays]
    missing: np.ndarray  # positions of the instances to compute, in order

    def merge(self, computed: Arrays | None) -> Arrays:
        """Every instance's answer, in order: those found and, at the missing positions, `computed`'s rows."""
        if not self.found and computed is not None:
            return computed  # nothing was cached: the computed rows are every instance's, in order
        if computed is not None:
            layouts = {name: (array.shape[1:], array.dtype) for name, array in computed.items()}
        else:
            layouts = {name: (row.shape, row.dtype) for name, row in next(iter(self.found.values())).items()}
        merged = {}
        for name, (row_shape, dtype) in layouts.items():
            out = np.empty((len(self.keys), *row_shape), dtype)
            if computed is not None:
                out[self.missing] = computed[name]
            for position, answer in self.found.items():
                out[position] = answer[name]
            merged[name] = out
        return merged


class ResultCache:
    """The tiers of one worker's cache for one model version (`model` is keys.model_identity's)."""

    def __init__(self, model: bytes, local: LocalTier, shared: RedisTier | None = None):
        self._model = model
        self.local = local
        self.shared = shared

    def for_model(self, model: bytes) -> ResultCache:
        """The same tiers for another model version: its keys, and so its answers, are its own."""
        return ResultCache(model, self.local, self.shared)

    def lookup(self, inputs: Arrays, count: int) -> Lookup:
        keys = instance_keys(self._model, inputs, count)
        answers: list[bytes | None] = self.local.get_many(keys)
        self._count(self.local, answers)
        if self.shared is not None:
            unknown = [position for position, answer in enumerate(answers) if answer is None]
            if unknown:
                shared = self.shared.get_many([keys[position] for position in unknown])
                self._count(self.shared, shared)
                self.local.put_many({keys[p]: a for p, a in zip(unknown, shared, strict=True) if a is not None})
                self._local_changed()
                for position, answer in zip(unknown, shared, strict=True):
                    answers[position] = answer
        found = {position: decode_arrays(answer) for position, answer in enumerate(answers) if answer is not None}
        missing = np.array([position for position, answer in enumerate(answers) if answer is None], dtype=np.intp)
        return Lookup(keys, found, missing)

    def repeated_answer(self, protocol: str, body: bytes) -> tuple[bytes, int] | None:
        """The encoded answer kept for this very body of `protocol`'s, and its instance count; None if not kept."""
        kept = self.local.get_many([self._body_key(protocol, body)])[0]
        if kept is None:
            return None
        count = int.from_bytes(kept[:4], "little")
        metrics.cache_looked_up(self.local.name, count, 0)
        return kept[4:], count

    def keep_answer(self, protocol: str, body: bytes, answer: bytes, count: int) -> None:
        """Keep `answer`, encoded by `protocol`, for a repeat of `body` (a request of `count` instances)."""
        self.local.put_many({self._body_key(protocol, body): count.to_bytes(4, "little") + answer})
        self._local_changed()

    def _body_key(self, protocol: str, body: bytes) -> bytes:
        digest = hashlib.blake2b(self._model, digest_size=DIGEST_BYTES, person=b"request body")
        digest.update(protocol.encode() + b"\x00")
        digest.update(body)
        return digest.digest()

    def store(self, lookup: Lookup, computed: Arrays) -> None:
        """Keep the answers computed for `lookup`'s missing instances (numeric outputs only)."""
        if any(array.dtype == object for array in computed.values()):
            return
        answers = {
            lookup.keys[position]: encode_arrays({name: array[row] for name, array in computed.items()})
            for row, position in enumerate(lookup.missing.tolist())
        }
        self.local.put_many(answers)
        if self.shared is not None:
            self.shared.put_many(answers)
        self._local_changed()

    def _local_changed(self) -> None:
        evicted = self.local.evictions - self.local.evictions_reported
        self.local.evictions_reported = self.local.evictions
        metrics.cache_filled(self.local.name, self.local.entries, self.local.bytes, evicted)

    @staticmethod
    def _count(tier: LocalTier | RedisTier, answers: list) -> None:
        hits = sum(answer is not None for answer in answers)
        metrics.cache_looked_up(tier.name, hits, len(answers) - hits)


def build_result_cache(settings: Settings, model: ServedModel, full_pass_s: float) -> ResultCache | None:
    """The worker's cache (None when CACHE_MAX_BYTES is 0), with the Redis tier when REDIS_URL is set."""
    if settings.cache_max_bytes == 0:
        return None
    identity = identity_of(model, settings.model_path)
    shared = None
    if settings.redis_url:
        client = redis_client(settings.redis_url, REDIS_TIMEOUT_PASSES * full_pass_s)
        shared = RedisTier(client, settings.cache_ttl_s)
        metrics.add_scrape_collector(RedisFigures(client))
    return ResultCache(identity, LocalTier(settings.cache_max_bytes, settings.cache_ttl_s), shared)


def identity_of(model: ServedModel, default_path: str) -> bytes:
    """The cache's identity of a model version: its name, number and files (for one built in memory, `default_path`)."""
    return model_identity(model.name, model.version, model_digest(model.path or default_path))
