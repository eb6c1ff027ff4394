"""The result cache under real Gunicorn, gthread and gevent: two workers sharing a real Redis."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

from tests.support import DEMO_SERVER_SETTINGS, scrape, total

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["gthread", "gevent"])
def cached_server(request, launch_server, demo_onnx_path, redis_url):
    server = launch_server(
        MODEL_PATH=str(demo_onnx_path),
        WORKER_CLASS=request.param,
        **{**DEMO_SERVER_SETTINGS, "CACHE_MAX_BYTES": str(1 << 20), "REDIS_URL": redis_url},
    )
    yield server
    server.stop()


def predict(server, instances, **headers) -> requests.Response:
    answer = requests.post(
        f"{server.url}/v1/models/digits:predict", data=json.dumps({"instances": instances}), headers=headers, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return answer


def wait_for_answers_in_redis(redis_client, count: int, timeout_s: float = 30.0) -> None:
    """Until Redis holds `count` answers: a worker's writes reach it just after its answer."""
    deadline = time.monotonic() + timeout_s
    while len(list(redis_client.scan_iter(match=b"tfms:answer:*"))) < count:
        assert time.monotonic() < deadline, f"Redis never held {count} answers"
        time.sleep(0.05)


def test_a_repeated_instance_is_answered_from_the_cache_with_the_very_same_bytes(
    cached_server, demo_holdout, redis_client
):
    images = demo_holdout[0][200:203].tolist()
    computed = predict(cached_server, images)
    assert int(computed.headers["X-Batch-Size"]) >= 1
    wait_for_answers_in_redis(redis_client, 3)
    # Another order, a request id, and whichever worker answers: every instance is a hit (Redis shares them),
    # and a body seen before is answered whole, with the same bytes as when its instances were looked up.
    # A Redis read has a few passes' time (REDIS_TIMEOUT_PASSES): one that runs out is a miss, and counted.
    answers = []
    for _ in range(8):
        errors_before = total(scrape(cached_server.url), "model_server_cache_errors_total")
        cached = predict(cached_server, images[::-1], **{"X-Request-Id": "another-request"})
        if cached.headers["X-Batch-Size"] != "0":
            assert total(scrape(cached_server.url), "model_server_cache_errors_total") > errors_before, "a miss"
        else:
            answers.append(cached.content)
        assert cached.json()["predictions"] == computed.json()["predictions"][::-1]
    assert len(answers) >= 4 and len(set(answers)) == 1, f"{len(answers)} of 8 answered from the cache"


def test_a_bulk_request_computes_only_the_rows_the_cache_lacks(cached_server, demo_holdout, redis_client):
    images = demo_holdout[0][300:340]
    predict(cached_server, images[:20].tolist())
    mixed = np.concatenate([images, images[:20]])  # 20 cached, 20 new, the cached again: 60 instances
    answer = np.array(predict(cached_server, mixed.tolist()).json()["predictions"])
    np.testing.assert_array_equal(answer[40:], answer[:20])
    fresh = np.array(predict(cached_server, images[20:].tolist()).json()["predictions"])
    np.testing.assert_array_equal(answer[20:40], fresh)


def test_metrics_report_the_cache_by_tier(cached_server, demo_holdout, redis_client):
    image = demo_holdout[0][400:401].tolist()
    predict(cached_server, image)
    wait_for_answers_in_redis(redis_client, 1)
    for _ in range(2):
        predict(cached_server, image)
    text = requests.get(f"{cached_server.url}/metrics", timeout=10).text
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("model_server_cache")
    }
    hits = [samples.get(f'model_server_cache_hits_total{{tier="{tier}"}}', 0) for tier in ("local", "redis")]
    assert sum(hits) >= 2
    assert samples['model_server_cache_misses_total{tier="local"}'] >= 1
    assert samples['model_server_cache_entries{tier="local"}'] >= 1
    assert samples['model_server_cache_bytes{tier="local"}'] > 0
    assert samples["model_server_cache_redis_keys"] >= 1
