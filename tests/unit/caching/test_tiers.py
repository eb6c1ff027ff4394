"""The cache's tiers: the local LRU bounded in bytes with a TTL, and Redis."""

from __future__ import annotations

import numpy as np

from service.array_bytes import encode_arrays
from service.caching.tiers import LocalTier, RedisTier, answer_bytes, redis_client


def answer(value: float) -> bytes:
    """One instance's answer as the tiers keep it (service/array_bytes.py)."""
    return encode_arrays({"y": np.full(10, value, np.float32)})


def test_the_local_tier_keeps_the_most_recently_used_answers_within_its_bytes():
    tier = LocalTier(max_bytes=2 * answer_bytes(answer(0)))
    tier.put_many({b"a": answer(1), b"b": answer(2)})
    assert tier.get_many([b"a"])[0] is not None  # a is now more recent than b
    tier.put_many({b"c": answer(3)})
    found = tier.get_many([b"a", b"b", b"c"])
    assert [f is not None for f in found] == [True, False, True]
    assert tier.evictions == 1 and tier.entries == 2 and tier.bytes <= 2 * answer_bytes(answer(0))


def test_an_answer_larger_than_the_local_tier_is_not_kept():
    tier = LocalTier(max_bytes=100)
    tier.put_many({b"a": answer(1)})
    assert tier.get_many([b"a"]) == [None] and tier.entries == 0


def test_local_answers_expire_after_their_time_to_live():
    now = [0.0]
    tier = LocalTier(max_bytes=10_000, ttl_s=5.0, timer=lambda: now[0])
    tier.put_many({b"a": answer(1)})
    now[0] = 4.9
    assert tier.get_many([b"a"])[0] is not None
    now[0] = 5.1
    assert tier.get_many([b"a"]) == [None]


def test_the_redis_tier_shares_answers_and_expires_them(redis_client):
    tier = RedisTier(redis_client, ttl_s=60)
    tier.put_many({b"a": answer(1.25)})
    assert tier.flush(timeout_s=10)
    found = RedisTier(redis_client).get_many([b"a", b"b"])  # another worker's view
    assert found[1] is None and found[0] == answer(1.25)
    key = next(iter(redis_client.scan_iter(match=b"tfms:answer:*")))
    assert 0 < redis_client.pttl(key) <= 60_000


def test_an_unreachable_redis_counts_as_a_miss_not_a_failure(caplog):
    from scripts.local_redis import free_port

    tier = RedisTier(redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=5.0))
    assert tier.get_many([b"a", b"b"]) == [None, None]
    tier.put_many({b"a": answer(1)})
    assert tier.flush(timeout_s=30)
    assert tier.errors == 2
    assert sum("Redis read failed" in record.getMessage() for record in caplog.records) == 1, "logged once a minute"


def test_redis_writes_go_in_one_pipeline_off_the_callers_path_and_their_queue_is_bounded(redis_client, monkeypatch):
    from service.caching import tiers

    monkeypatch.setattr(tiers, "MAX_QUEUED_WRITES", 3)
    tier = RedisTier(redis_client)
    pipelines = []
    original = redis_client.pipeline
    monkeypatch.setattr(redis_client, "pipeline", lambda **options: pipelines.append(options) or original(**options))
    with tier._changed:  # the writer cannot take the queue while the caller puts
        tier.put_many({b"a": answer(1), b"b": answer(2)})
        tier.put_many({b"c": answer(3), b"d": answer(4)})
    assert tier.flush(timeout_s=10)
    assert len(pipelines) == 1
    found = tier.get_many([b"a", b"b", b"c", b"d"])
    assert found[0] is None, "the oldest queued answer was forgotten"
    assert found[1:] == [answer(2), answer(3), answer(4)]
