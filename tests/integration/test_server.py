"""The service under real Gunicorn, gthread and gevent, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

pytestmark = pytest.mark.integration


def post(url, body, **options):
    data = body if isinstance(body, bytes) else json.dumps(body)
    return requests.post(url, data=data, timeout=60, **options)


def test_concurrent_requests_are_batched_and_match_the_in_process_model(demo_server, demo_holdout, demo_model_path):
    import keras

    images, _ = demo_holdout
    images = images[:64]
    barrier = threading.Barrier(32)

    def predict_one(index):
        if index < 32:
            barrier.wait(30)  # release the first 32 together so they reach the batchers at once
        return post(f"{demo_server.url}/v1/models/digits:predict", {"instances": [images[index].tolist()]})

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(predict_one, range(len(images))))
    assert [a.status_code for a in answers] == [200] * len(images)
    batch_sizes = [int(a.headers["X-Batch-Size"]) for a in answers]
    assert max(batch_sizes) > 1, batch_sizes
    served = np.array([a.json()["predictions"][0] for a in answers])
    expected = keras.models.load_model(demo_model_path)(images, training=False).numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)


def test_a_request_with_several_instances_gets_its_own_rows_back(demo_server, demo_holdout):
    images, _ = demo_holdout
    answer = post(f"{demo_server.url}/predict", {"instances": images[:5].tolist()})
    columnar = post(f"{demo_server.url}/predict", {"inputs": images[:5].tolist()})
    assert answer.status_code == columnar.status_code == 200
    assert len(answer.json()["predictions"]) == 5
    np.testing.assert_allclose(answer.json()["predictions"], columnar.json()["outputs"], rtol=1e-5)


def test_a_request_of_many_batches_with_repeats_is_answered_whole_and_in_order(
    demo_server, demo_holdout, demo_model_path
):
    import keras

    images = demo_holdout[0][:75]
    instances = np.concatenate([images, images[::-1]])  # 150 instances, each twice: 75 distinct, 5 batches of 16
    answer = post(f"{demo_server.url}/predict", {"instances": instances.tolist()})
    assert answer.status_code == 200, answer.text
    served = np.array(answer.json()["predictions"])
    assert served.shape == (150, 10)
    np.testing.assert_array_equal(served[75:], served[:75][::-1])  # a repeat gets the very same answer
    expected = keras.models.load_model(demo_model_path)(images, training=False).numpy()
    np.testing.assert_allclose(served[:75], expected, rtol=1e-4, atol=1e-6)
    assert 1 <= int(answer.headers["X-Batch-Size"]) <= 16


def test_metadata_and_status(demo_server):
    metadata = requests.get(f"{demo_server.url}/v1/models/digits/metadata", timeout=10).json()
    inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert [d["size"] for d in inputs["image"]["tensor_shape"]["dim"]] == ["-1", "8", "8", "1"]
    status = requests.get(f"{demo_server.url}/v1/models/digits", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/predict", b"{not json", 400),
        ("POST", "/predict", {"instances": []}, 400),
        ("POST", "/predict", {"instances": [[1, 2, 3]]}, 400),
        ("POST", "/predict", {"instances": [[[[1]] * 8] * 8] * 201}, 400),  # more than MAX_REQUEST_INSTANCES
        ("POST", "/predict", b'{"instances": [[[[NaN]]]]}', 400),
        ("POST", "/predict", {"signature": 1}, 400),
        ("POST", "/v1/models/other:predict", {"instances": [[[[1]] * 8] * 8]}, 404),
        ("GET", "/v1/models/other/metadata", None, 404),
        ("GET", "/no/such/route", None, 404),
        ("GET", "/predict", None, 405),
        ("PUT", "/v1/models/digits:predict", {"instances": []}, 405),
        ("POST", "/predict", b"[" + b"1," * 60_000 + b"1]", 413),  # over MAX_BODY_BYTES=100000
    ],
)
def test_every_client_mistake_gets_its_status_and_a_json_error(demo_server, method, path, body, status):
    data = body if isinstance(body, bytes | type(None)) else json.dumps(body)
    answer = requests.request(method, demo_server.url + path, data=data, timeout=30)
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"]


def test_master_never_loads_tensorflow_nor_grpc_and_logs_its_plan(demo_server):
    master = psutil.Process(demo_server.process.pid)
    workers = master.children()
    assert len(workers) == 2
    maps = {p.pid: Path(f"/proc/{p.pid}/maps").read_text() for p in [master, *workers]}
    assert "tensorflow" not in maps[master.pid] and "cygrpc" not in maps[master.pid]
    assert all("tensorflow" in maps[w.pid] and "cygrpc" in maps[w.pid] for w in workers)
    log = demo_server.log()
    assert "Sizing plan" in log and "workers      2: set by WORKERS" in log


@pytest.fixture(scope="module")
def tiny_queue_server(launch_server, demo_onnx_path):
    server = launch_server(
        MODEL_PATH=str(demo_onnx_path),
        WORKERS="1",
        MAX_BATCH_SIZE="1",
        MAX_QUEUE="1",
        BATCH_POLICY="fixed",
        BATCH_TIMEOUT_MS="0",
    )
    yield server
    server.stop()


def test_full_queue_answers_503_with_retry_after_and_loses_nothing(tiny_queue_server, demo_holdout):
    images, _ = demo_holdout
    body = {"instances": [images[0].tolist()]}
    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(lambda _: post(f"{tiny_queue_server.url}/predict", body), range(480)))
    statuses = [a.status_code for a in answers]
    refused = [a for a in answers if a.status_code == 503]
    assert set(statuses) == {200, 503} and refused, statuses
    assert all(int(a.headers["Retry-After"]) >= 1 and "queue is full" in a.json()["error"] for a in refused)
    assert all(len(a.json()["predictions"]) == 1 for a in answers if a.status_code == 200)


@pytest.fixture(scope="module")
def guarded_model_path(tmp_path_factory):
    """A SavedModel whose forward pass raises for inputs above 1000, as a real model can."""
    import tensorflow as tf

    class Guarded(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            tf.debugging.assert_less(x, 1000.0, message="input out of the model's range")
            return {"y": x * 2}

    path = tmp_path_factory.mktemp("guarded") / "guarded"
    module = Guarded()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_a_poison_input_fails_only_its_own_request_on_a_saved_model(start_server, guarded_model_path):
    server = start_server(
        MODEL_PATH=str(guarded_model_path), WORKERS="1", WORKER_CLASS="gevent", BATCH_POLICY="fixed",
        BATCH_TIMEOUT_MS="200", MAX_BATCH_SIZE="8",
    )  # fmt: skip
    url = f"{server.url}/v1/models/guarded:predict"
    bodies = [{"instances": [[i, 1]]} for i in range(6)]
    bodies[3] = {"instances": [[5000, 1]]}  # the model asserts its inputs are below 1000
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: post(url, body), bodies))
    poisoned = answers.pop(3)
    message = poisoned.json()["error"]
    assert poisoned.status_code == 422 and "assertion failed: [input out of the model" in message
    assert "Graph execution error" not in message
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.json()["predictions"] for a in answers] == [[[2.0 * i, 2.0]] for i in (0, 1, 2, 4, 5)]
    stats = requests.get(f"{server.url}/stats", timeout=10).json()
    assert stats["failed_batches"] == 1 and stats["failed_requests_alone"] == 1, "they shared the failed batch"
