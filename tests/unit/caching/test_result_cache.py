"""The result cache over its tiers: per-instance hits, bit-identical answers, the Redis tier shared, metrics by tier."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY

from service.array_bytes import encode_arrays
from service.caching.keys import model_identity
from service.caching.result_cache import ResultCache
from service.caching.tiers import LocalTier, RedisTier, answer_bytes

MODEL = model_identity("m", 1, "digest")


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[v, v + 0.5] for v in values], np.float32)}


def forward(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs whose last bits depend on the inputs: any reordering or conversion shows."""
    x = inputs["x"]
    return {"y": np.sin(x * 1.1) / 3, "n": (x[:, 0] * 1000).astype(np.int64)}


def serve(cache: ResultCache, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """As bulk.predict_instances does: compute only the missing rows; the answers, and how many rows were computed."""
    count = len(inputs["x"])
    lookup = cache.lookup(inputs, count)
    if not lookup.missing.size:
        return lookup.merge(None), 0
    computed = forward({name: array[lookup.missing] for name, array in inputs.items()})
    cache.store(lookup, computed)
    return lookup.merge(computed), lookup.missing.size


def hits(tier: str) -> float:
    return REGISTRY.get_sample_value("model_server_cache_hits_total", {"tier": tier}) or 0.0


def test_each_instance_is_looked_up_alone_and_answers_are_bit_identical_to_computed_ones():
    cache = ResultCache(MODEL, LocalTier(1 << 20))
    first, computed = serve(cache, rows(1, 2, 3))
    assert computed == 3
    second, computed = serve(cache, rows(3, 4, 1))  # two repeats in another order, one new
    assert computed == 1
    expected = forward(rows(3, 4, 1))
    for name in expected:
        assert second[name].dtype == expected[name].dtype
        assert second[name].tobytes() == expected[name].tobytes()
    assert second["y"][0].tobytes() == first["y"][2].tobytes()


def test_a_request_wholly_in_the_cache_is_answered_without_a_pass():
    cache = ResultCache(MODEL, LocalTier(1 << 20))
    serve(cache, rows(5, 6))
    answer, computed = serve(cache, rows(6, 5, 6))
    assert computed == 0
    assert answer["y"].tobytes() == forward(rows(6, 5, 6))["y"].tobytes()


def test_another_version_of_the_model_never_reads_the_old_answers():
    local = LocalTier(1 << 20)
    serve(ResultCache(MODEL, local), rows(1))
    assert serve(ResultCache(model_identity("m", 2, "digest"), local), rows(1))[1] == 1


def test_a_worker_reads_another_workers_answers_from_redis_then_from_its_own_memory(redis_client):
    written = RedisTier(redis_client)
    writer = ResultCache(MODEL, LocalTier(1 << 20), written)
    serve(writer, rows(1, 2))
    assert written.flush(timeout_s=10), "Redis writes leave the request's path: wait until they are sent"
    reader = ResultCache(MODEL, LocalTier(1 << 20), RedisTier(redis_client))
    redis_hits, local_hits = hits("redis"), hits("local")
    answer, computed = serve(reader, rows(2, 1, 9))
    assert computed == 1
    assert answer["y"].tobytes() == forward(rows(2, 1, 9))["y"].tobytes()
    assert hits("redis") - redis_hits == 2 and hits("local") == local_hits
    serve(reader, rows(2, 1))
    assert hits("local") - local_hits == 2, "Redis's answers were kept in the worker's memory"


def test_metrics_count_misses_entries_bytes_and_evictions():
    one_answer = encode_arrays({name: array[0] for name, array in forward(rows(1)).items()})
    cache = ResultCache(MODEL, LocalTier(max_bytes=3 * answer_bytes(one_answer)))  # room for three
    before = REGISTRY.get_sample_value("model_server_cache_evictions_total", {"tier": "local"}) or 0.0
    misses = REGISTRY.get_sample_value("model_server_cache_misses_total", {"tier": "local"}) or 0.0
    serve(cache, rows(1, 2, 3, 4, 5))
    assert REGISTRY.get_sample_value("model_server_cache_misses_total", {"tier": "local"}) - misses == 5
    assert REGISTRY.get_sample_value("model_server_cache_evictions_total", {"tier": "local"}) - before == 2
    assert REGISTRY.get_sample_value("model_server_cache_entries", {"tier": "local"}) == 3
    assert REGISTRY.get_sample_value("model_server_cache_bytes", {"tier": "local"}) == cache.local.bytes > 0


def test_a_kept_body_is_read_back_whole_for_that_protocol_and_model_only():
    local = LocalTier(1 << 20)
    cache = ResultCache(MODEL, local)
    body, answer = b'{"instances": [[1, 1.5]]}', b'{"predictions": [[0.5]]}'
    assert cache.repeated_answer("tfserving_rest", body) is None
    cache.keep_answer("tfserving_rest", body, answer, 1)
    local_hits = hits("local")
    assert cache.repeated_answer("tfserving_rest", body) == (answer, 1)
    assert hits("local") - local_hits == 1, "counted as its instances' hits"
    assert cache.repeated_answer("tfserving_rest", body + b" ") is None, "only the very same bytes"
    assert cache.repeated_answer("v2", body) is None, "another protocol's answer is encoded differently"
    assert ResultCache(model_identity("m", 2, "digest"), local).repeated_answer("tfserving_rest", body) is None
