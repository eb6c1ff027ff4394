"""Model versions on real Gunicorn servers, gthread and gevent: a new version served under load, no request lost."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.support import scrape, wait_for_serving_workers, wait_until

pytestmark = pytest.mark.integration

ONE_ROW = {"instances": [[1.0, 1.0]]}


def publish(base: Path, number: int, write) -> None:
    """Write a version beside the base path's versions, then move it in at once, as a deployment should."""
    staging = base / f"{number}.partial"
    write(staging)
    os.rename(staging, base / str(number))


def first_answer(url: str, path: str = "/predict") -> float:
    return requests.post(url + path, json=ONE_ROW, timeout=30).json()["predictions"][0][0]


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_a_new_version_takes_over_under_load_with_no_request_lost(
    worker_class, start_server, tmp_path, add_onnx_version
):
    base = tmp_path / "scaler"
    add_onnx_version(base, 1)
    server = start_server(
        MODEL_BASE_PATH=str(base), WORKERS="2", WORKER_CLASS=worker_class, MODEL_POLL_S="0.2", GRPC_PORT="0"
    )
    wait_for_serving_workers(server.url, 2)  # both serve version 1 before version 2 is published
    statuses: Counter = Counter()
    answers: Counter = Counter()
    stop = threading.Event()

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.post(server.url + "/v1/models/scaler:predict", json=ONE_ROW, timeout=30)
                statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    answers[answer.json()["predictions"][0][0]] += 1

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    try:
        wait_until(lambda: answers[1.0] > 50, what="answers from version 1")
        publish(base, 2, lambda staging: add_onnx_version(staging.parent, staging.name, factor=2.0))
        # Both workers switch: a run of answers from version 2 only, over many connections' worth.
        wait_until(lambda: answers[2.0] > 50, what="answers from version 2")
        seen = answers[1.0]
        wait_until(lambda: answers[2.0] > 500, what="more answers from version 2")
        assert answers[1.0] == seen or answers[1.0] - seen < 50  # version 1 stopped answering
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)
    assert set(statuses) == {200}, statuses  # not one request failed across the switch
    for _ in range(10):  # every worker now answers with version 2, whichever gets the connection
        assert first_answer(server.url) == 2.0
    status = requests.get(server.url + "/v1/models/scaler", timeout=30).json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "END")]
    samples = scrape(server.url)
    predictions = {
        dict(labels)["version"]: count for (name, labels), count in samples.items()
        if name == "model_server_predictions_total"
    }  # fmt: skip
    assert predictions["1"] + predictions["2"] >= sum(statuses.values()) and predictions["2"] > 500
    assert samples[("model_server_model_info", frozenset({"name": "scaler", "version": "1"}.items()))] == 0
    assert samples[("model_server_model_info", frozenset({"name": "scaler", "version": "2"}.items()))] == 1
    loads = [
        dict(labels)["version"] for (name, labels) in samples if name == "model_server_model_load_duration_seconds"
    ]
    assert Counter(loads) == {"1": 2, "2": 2}  # each worker's load of each version
    # The new version was measured before the swap, under gevent too (a child process from an OS thread).
    assert "could not measure" not in server.log() and "MiB more per worker" in server.log()


def test_keras_versions_swap_inside_a_gevent_worker_and_a_broken_one_changes_nothing(start_server, tmp_path):
    import keras

    def write_keras(directory: Path, weight: float) -> None:
        model = keras.Sequential(
            [
                keras.Input((2,), name="x"),
                keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(weight), name="y"),
            ]
        )
        directory.mkdir(parents=True)
        model.save(directory / "model.keras")

    base = tmp_path / "linear"
    write_keras(base / "1", 1.0)
    server = start_server(
        MODEL_BASE_PATH=str(base), WORKERS="1", WORKER_CLASS="gevent", MODEL_POLL_S="0.2",
        MODEL_VERSION_LABELS="stable=1,canary=3", GRPC_PORT="0",
    )  # fmt: skip
    assert first_answer(server.url) == 2.0  # 1 x 1 + 1 x 1
    publish(base, 2, lambda staging: (staging.mkdir(), (staging / "model.keras").write_bytes(b"not a zip")))
    wait_until(
        lambda: any(
            s["state"] == "END"
            for s in requests.get(server.url + "/v1/models/linear", timeout=30).json()["model_version_status"]
        ),
        what="version 2 failing to load",
    )
    status = requests.get(server.url + "/v1/models/linear/versions/2", timeout=30).json()["model_version_status"][0]
    assert (
        status["state"] == "END" and status["status"]["error_code"] == "UNKNOWN" and status["status"]["error_message"]
    )
    assert first_answer(server.url) == 2.0  # version 1 still serves
    publish(base, 3, lambda staging: write_keras(staging, 3.0))
    wait_until(lambda: first_answer(server.url) == 6.0, what="version 3 serving")
    assert first_answer(server.url, "/v1/models/linear/labels/canary:predict") == 6.0
    stable = requests.post(server.url + "/v1/models/linear/labels/stable:predict", json=ONE_ROW, timeout=30)
    assert stable.status_code == 404 and "END" in stable.json()["error"]  # the latest policy released it
