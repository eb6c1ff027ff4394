"""Metrics, logs and the API document on a real multi-worker Gunicorn server."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from tests.support import scrape, total, value, wait_for_serving_workers

pytestmark = pytest.mark.integration

PREDICT_ROUTE = "/v1/models/{name}:predict"
LOAD_DURATION = "model_server_model_load_duration_seconds"


def json_events(log: str) -> list[dict]:
    # split on newlines only: str.splitlines() also breaks at U+0085, which a fuzzed path can hold
    return [json.loads(line) for line in log.split("\n") if line.startswith("{")]


def predict_instances(url: str, images, count: int, request_id: str) -> requests.Response:
    body = {"instances": images[:count].tolist()}
    return requests.post(f"{url}/v1/models/digits:predict", json=body, headers={"X-Request-ID": request_id}, timeout=60)


def test_metrics_add_up_across_workers(onnx_server, demo_holdout):
    images, _ = demo_holdout
    sizes = [1 + i % 3 for i in range(60)]
    before = wait_for_serving_workers(onnx_server.url, 2)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda i: predict_instances(onnx_server.url, images, sizes[i], f"sum-{i}"), range(len(sizes)))
        )
    assert [a.status_code for a in answers] == [200] * len(sizes)
    after = scrape(onnx_server.url)

    def delta(metric, **labels):
        return value(after, metric, **labels) - value(before, metric, **labels)

    def delta_total(metric):
        return total(after, metric) - total(before, metric)

    assert delta(
        "model_server_http_requests_total", protocol="tfserving_rest", route=PREDICT_ROUTE, method="POST", status="200"
    ) == len(sizes)
    assert delta(
        "model_server_http_request_duration_seconds_count", protocol="tfserving_rest", route=PREDICT_ROUTE
    ) == len(sizes)
    assert delta("model_server_batch_queue_wait_seconds_count", model="digits") == len(sizes)
    batches = delta_total("model_server_batches_total")
    assert 0 < batches < len(sizes), "requests close together share forward passes"
    assert delta("model_server_batch_size_instances_count", model="digits") == batches
    assert delta("model_server_forward_pass_seconds_count", model="digits") == batches
    assert delta("model_server_batch_size_instances_sum", model="digits") == sum(sizes)
    assert value(after, "model_server_workers_alive") == 2
    assert ("model_server_queue_depth_instances", frozenset({("model", "digits")})) in after
    assert value(after, "model_server_queue_depth_instances", model="digits") == 0
    assert value(after, "model_server_instances_in_flight", model="digits") == 0
    assert value(after, "model_server_model_info", name="digits", version="1") == 1
    workers = {str(p.pid) for p in psutil.Process(onnx_server.process.pid).children()}
    load_durations = {
        dict(labels)["pid"]: seconds for (name, labels), seconds in after.items() if name == LOAD_DURATION
    }
    assert load_durations.keys() == workers and all(seconds > 0 for seconds in load_durations.values())

    # Per worker, from the JSON access log: each worker served some, and they add up to the metrics' total.
    served_by = Counter(
        event["pid"] for event in json_events(onnx_server.log()) if str(event.get("request_id")).startswith("sum-")
    )
    assert len(served_by) == 2 and sum(served_by.values()) == len(sizes)


def test_access_log_is_json_with_the_request_id_and_the_plan_is_one_event(demo_server, demo_holdout):
    images, _ = demo_holdout
    answer = predict_instances(demo_server.url, images, 2, "trace-me-1")
    assert answer.headers["X-Request-ID"] == "trace-me-1"
    generated = requests.get(demo_server.url + "/healthz", timeout=10).headers["X-Request-ID"]
    events = json_events(demo_server.log())
    (access,) = [e for e in events if e.get("request_id") == "trace-me-1"]
    assert access["event"] == "access" and access["route"] == PREDICT_ROUTE and access["status"] == 200
    assert access["batch_size"] >= 2 and access["duration_ms"] > 0 and access["level"] == "INFO"
    assert any(e.get("request_id") == generated and e["route"] == "/healthz" for e in events)
    (plan,) = [e for e in events if e.get("event") == "sizing_plan"]
    assert plan["plan"]["workers"] == 2 and plan["plan"]["footprint"]["runtime_bytes"] > 0


def test_real_answers_validate_against_the_served_document(demo_server):
    document = requests.get(demo_server.url + "/openapi.json", timeout=10).json()
    openapi = OpenAPI.from_dict(document)
    url = demo_server.url
    image = [[[0]] * 8] * 8
    calls = [
        ("POST", "/v1/models/digits:predict", {"instances": [image, image]}),
        ("POST", "/v1/models/digits/versions/1:predict", {"inputs": [image]}),
        ("POST", "/predict", {"instances": [image]}),
        ("POST", "/predict", {"instances": [[1, 2]]}),
        ("POST", "/predict", {"instances": [True]}),
        ("POST", "/v1/models/nope:predict", {"instances": [image]}),
        ("GET", "/v1/models/digits", None),
        ("GET", "/v1/models/digits/metadata", None),
        ("GET", "/v1/models/digits/versions/2", None),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/stats", None),
        ("GET", "/metrics", None),
    ]
    for method, path, body in calls:
        answer = requests.request(method, url + path, json=body, timeout=30)
        openapi.validate_response(RequestsOpenAPIRequest(answer.request), RequestsOpenAPIResponse(answer))


def test_docs_page_and_its_assets_are_served_locally(demo_server):
    page = requests.get(demo_server.url + "/docs/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "/openapi.json" in page.text


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="module")
def churn_server(launch_server, demo_onnx_path, metrics_dir):
    server = launch_server(
        MODEL_PATH=str(demo_onnx_path), WORKERS="2", WORKER_CLASS="gthread", METRICS_DIR=str(metrics_dir)
    )
    yield server
    server.stop()


def test_a_dead_workers_live_gauges_leave_and_its_counts_stay(churn_server, metrics_dir, demo_holdout):
    images, _ = demo_holdout
    wait_for_serving_workers(churn_server.url, 2)
    for i in range(20):
        assert predict_instances(churn_server.url, images, 1, f"churn-{i}").status_code == 200
    before = scrape(churn_server.url)
    served = value(
        before,
        "model_server_http_requests_total",
        protocol="tfserving_rest",
        route=PREDICT_ROUTE,
        method="POST",
        status="200",
    )
    assert served == 20 and value(before, "model_server_workers_alive") == 2

    master = psutil.Process(churn_server.process.pid)
    victim, *others = [p.pid for p in master.children()]
    survivors = set(others)
    assert any(str(victim) in path.name for path in metrics_dir.iterdir())
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        replacements = {p.pid for p in master.children()} - survivors
        after = scrape(churn_server.url)
        loaded = {dict(labels)["pid"] for (name, labels), seconds in after.items() if name == LOAD_DURATION and seconds}
        if victim not in replacements and len(replacements) == 1 and str(next(iter(replacements))) in loaded:
            break
        time.sleep(0.2)  # polling interval: the master reaps the victim (child_exit) and forks a replacement
    else:
        pytest.fail("the killed worker was not replaced by a serving one within 120 s")
    assert value(after, "model_server_workers_alive") == 2, "the dead worker's live gauge is still summed"
    assert not any(path.name.startswith("gauge_live") and str(victim) in path.name for path in metrics_dir.iterdir())
    assert (
        value(
            after,
            "model_server_http_requests_total",
            protocol="tfserving_rest",
            route=PREDICT_ROUTE,
            method="POST",
            status="200",
        )
        == 20
    )
