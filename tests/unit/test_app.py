"""Routes and error answers through Flask's test client, with the fake model (y = 2x)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time

import pytest
from prometheus_client import REGISTRY

from service.app import create_app
from service.hosting.builder import build_batcher


def test_predict_row_format(client, make_rows):
    answer = client.post("/predict", data=json.dumps({"instances": make_rows(2)}))
    assert answer.status_code == 200
    assert answer.json == {"predictions": [[0.0, 1.0, -0.0], [2.0, 3.0, -2.0]]}
    assert answer.headers["X-Batch-Size"] == "2"


def test_predict_tf_serving_route_and_columnar_format(client, make_rows):
    answer = client.post("/v1/models/fake:predict", json={"inputs": make_rows(1, start=1)})
    assert answer.status_code == 200 and answer.json == {"outputs": [[2.0, 3.0, -2.0]]}
    versioned = client.post("/v1/models/fake/versions/1:predict", json={"instances": make_rows(1)})
    assert versioned.status_code == 200


def test_body_is_read_as_json_whatever_the_content_type(client, make_rows):
    answer = client.post(
        "/predict", data=json.dumps({"instances": make_rows(1)}), content_type="application/x-www-form-urlencoded"
    )
    assert answer.status_code == 200


def test_status_and_metadata(client):
    status = client.get("/v1/models/fake")
    assert status.json["model_version_status"][0] == {
        "version": "1",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    signature = client.get("/v1/models/fake/metadata").json["metadata"]["signature_def"]["signature_def"]
    x = signature["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "3"]


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("model_server_rejected_requests_total", {"reason": reason}) or 0.0


def test_health_and_readiness(client, app, make_rows):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    app.extensions["model_server"].close()
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    refused_before = rejected("not_ready")
    assert client.post("/predict", json={"instances": make_rows(1)}).status_code == 503
    assert rejected("not_ready") == refused_before + 1


def error_of(answer, status):
    assert answer.status_code == status, answer.data
    assert answer.is_json and isinstance(answer.json["error"], str) and answer.json["error"]
    return answer.json["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{oops", "not valid JSON"),
        (b'{"instances": [[1, 2]]}', "shape [3]"),
        (b'{"instances": []}', "empty"),
        (b'{"instances": [[1, 2, NaN]]}', "non-finite"),
        (b'{"rows": []}', "unknown keys"),
        (b'{"instances": [[1, 2, 3]]' + b"," + b'"inputs": [[1, 2, 3]]}', "not both"),
    ],
)
def test_client_mistakes_get_400_with_a_json_error(client, body, fragment):
    assert fragment in error_of(client.post("/predict", data=body), 400)


def test_more_instances_than_max_request_instances_get_400_naming_it(client, make_rows):
    message = error_of(client.post("/predict", json={"instances": make_rows(101)}), 400)
    assert "at most 100" in message and "MAX_REQUEST_INSTANCES" in message


def test_a_request_larger_than_a_batch_is_split_into_passes_and_answered_in_order(client, fake_forward, make_rows):
    fake_forward.batch_sizes.clear()  # forget the warm-up's passes
    answer = client.post("/predict", json={"instances": make_rows(30)})
    assert answer.status_code == 200, answer.data
    assert answer.json["predictions"] == [[2 * value for value in row] for row in make_rows(30)]
    assert fake_forward.batch_sizes == [8, 8, 8, 8], "8 + 8 + 8 + 6 (padded to 8)"
    assert int(answer.headers["X-Batch-Size"]) == 8, "the largest batch its instances were served in"


def test_identical_instances_are_computed_once_and_answered_everywhere(client, fake_forward, make_rows):
    distinct = make_rows(6)
    instances = [distinct[i % 6] for i in range(24)]  # each of 6 instances 4 times
    fake_forward.batch_sizes.clear()  # forget the warm-up's passes
    answer = client.post("/predict", json={"instances": instances})
    assert answer.status_code == 200, answer.data
    assert answer.json["predictions"] == [[2 * value for value in row] for row in instances]
    assert fake_forward.batch_sizes == [8], "6 distinct instances, padded to 8, in one pass"


def test_a_columnar_bulk_request_keeps_its_layout(client, fake_forward, make_rows):
    answer = client.post("/predict", json={"inputs": make_rows(20)})
    assert answer.status_code == 200, answer.data
    assert answer.json["outputs"] == [[2 * value for value in row] for row in make_rows(20)]


def test_unknown_model_version_and_route_get_404(client, make_rows):
    assert "not served here" in error_of(client.post("/v1/models/other:predict", json={"instances": []}), 404)
    assert "no version 2" in error_of(client.get("/v1/models/fake/versions/2"), 404)
    error_of(client.get("/nowhere"), 404)


def test_wrong_method_gets_405(client):
    answer = client.get("/predict")
    error_of(answer, 405)
    assert "POST" in answer.headers["Allow"]
    error_of(client.get("/v1/models/fake:predict"), 405)


def test_body_over_the_limit_gets_413(client):
    error_of(client.post("/predict", data=b"[" + b"0," * 4096 + b"0]"), 413)


def v2_binary(instances: list) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol request with its tensor in binary after the JSON header."""
    import numpy as np

    data = np.asarray(instances, np.float32).tobytes()
    tensor = {
        "name": "x",
        "shape": [len(instances), 3],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(data)},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_bodies_are_taken_on_every_inference_route(client, make_rows, coding):
    import gzip
    import zlib

    compress = gzip.compress if coding == "gzip" else zlib.compress
    rows = make_rows(2)
    flat = [value for row in rows for value in row]
    binary, binary_headers = v2_binary(rows)
    v2_json = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": flat}]}
    for path, body, headers, status in [
        ("/predict", json.dumps({"instances": rows}).encode(), {}, 200),
        ("/v1/models/fake:predict", json.dumps({"inputs": {"x": rows}}).encode(), {}, 200),
        ("/v2/models/fake/infer", json.dumps(v2_json).encode(), {}, 200),
        ("/v2/models/fake/infer", binary, binary_headers, 200),
        ("/v1/models/fake/jobs", json.dumps({"instances": rows}).encode(), {}, 202),
    ]:
        answer = client.post(path, data=compress(body), headers={"Content-Encoding": coding, **headers})
        assert answer.status_code == status, (path, answer.json)
        if path.startswith("/v2"):
            assert answer.json["outputs"][0]["data"] == [2 * value for value in flat]
        elif status == 200:
            assert [row[0] for row in answer.json.get("predictions") or answer.json["outputs"]] == [0.0, 2.0]


def test_a_body_in_another_coding_gets_415_and_a_bad_one_400(client, make_rows):
    body = json.dumps({"instances": make_rows(1)}).encode()
    assert "send gzip, deflate or none" in error_of(
        client.post("/predict", data=body, headers={"Content-Encoding": "br"}), 415
    )
    assert "not valid gzip" in error_of(client.post("/predict", data=body, headers={"Content-Encoding": "gzip"}), 400)


class BackgroundPost(threading.Thread):
    """A POST /predict from its own thread (it blocks while the fake model is held); `answer` once joined."""

    def __init__(self, client, instances: list, headers: dict | None = None):
        super().__init__()
        self.answer = None
        self._call = lambda: client.post("/predict", json={"instances": instances}, headers=headers or {})
        self.start()

    def run(self):
        self.answer = self._call()


def wait_for_queue_depth(server, instances: int) -> None:
    deadline = time.monotonic() + 10
    while server.sole.batcher.queue_depth < instances:  # polling, not a sleep to make timing happen
        assert time.monotonic() < deadline, f"only {server.sole.batcher.queue_depth} instances queued"
        threading.Event().wait(0.001)


def test_full_queue_gets_503_with_retry_after(settings, fake_model, fake_forward, make_rows):
    app = create_app(dataclasses.replace(settings, concurrent_batches=1), fake_model)
    client, server = app.test_client(), app.extensions["model_server"]
    fake_forward.gate.clear()
    fake_forward.entered.clear()

    threads = [BackgroundPost(client, make_rows(8))]
    try:
        assert fake_forward.entered.wait(10)  # the first request is running and holds the batcher
        threads += [BackgroundPost(client, make_rows(8)), BackgroundPost(client, make_rows(8))]
        wait_for_queue_depth(server, 16)  # the limit
        refused_before = rejected("queue_full")
        answer = client.post("/predict", json={"instances": make_rows(1)})
        assert "queue is full" in error_of(answer, 503)
        assert int(answer.headers["Retry-After"]) >= 1
        assert rejected("queue_full") == refused_before + 1
    finally:
        fake_forward.gate.set()
        for thread in threads:
            thread.join(10)
        server.close()


def test_failing_forward_pass_gets_500_naming_the_cause_and_the_next_batch_works(client, fake_forward, make_rows):
    fake_forward.fail_with = FloatingPointError("overflow in layer 3")
    message = error_of(client.post("/predict", json={"instances": make_rows(1)}), 500)
    assert "FloatingPointError: overflow in layer 3" in message
    fake_forward.fail_with = None
    assert client.post("/predict", json={"instances": make_rows(1)}).status_code == 200


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_stats_explain_the_batching_of_this_worker(settings, fake_model, make_rows, policy):
    app = create_app(dataclasses.replace(settings, batch_policy=policy), fake_model)
    client = app.test_client()
    try:
        for _ in range(3):
            assert client.post("/predict", json={"instances": make_rows(2)}).status_code == 200
        stats = client.get("/stats").get_json()
    finally:
        app.extensions["model_server"].close()
    assert stats["policy"] == policy and stats["pid"] == os.getpid()
    assert stats["requests"] == 3 and stats["instances"] == 6 and stats["mean_batch_size"] == 2
    assert sum(stats["sent_because"].values()) == stats["batches"] == 3
    assert set(stats["cost_model"]["ms_by_batch_size"]) == {"1", "2", "4", "8"}  # seeded by the warm-up
    assert stats["arrivals"]["rate_per_s"] > 0


def test_the_warm_up_probe_sizes_the_batcher(settings, fake_model, fake_forward, make_rows, monkeypatch):
    # As on a GPU where batch 8 did not fit: batches stop at 4, and a request of 5 takes two passes.
    monkeypatch.setattr(fake_model, "warm_up", lambda **_: {1: 0.010, 2: 0.011, 4: 0.012})
    app = create_app(settings, fake_model)
    try:
        assert app.extensions["model_server"].sole.batcher.max_batch_size == 4
        assert app.test_client().post("/predict", json={"instances": make_rows(5)}).status_code == 200
        assert fake_forward.batch_sizes == [4, 1]
    finally:
        app.extensions["model_server"].close()
    # Under the adaptive policy a batch is full where larger ones stop paying.
    flat = build_batcher(dataclasses.replace(settings, batch_policy="adaptive"), {1: 0.01, 2: 0.02, 4: 0.04}, "fake")
    try:
        assert (flat.max_batch_size, flat.preferred_batch_size) == (4, 1)
    finally:
        flat.close()


@pytest.mark.parametrize("header", ["soon", "0", "-5", "nan", "inf"])
def test_a_bad_request_timeout_header_gets_400(client, make_rows, header):
    answer = client.post("/predict", json={"instances": make_rows(1)}, headers={"X-Request-Timeout-Ms": header})
    assert "X-Request-Timeout-Ms" in error_of(answer, 400)


def test_a_request_past_its_deadline_in_the_queue_gets_504_and_is_not_run(
    settings, fake_model, fake_forward, make_rows
):
    app = create_app(dataclasses.replace(settings, concurrent_batches=1, request_timeout_ms=60_000), fake_model)
    client, server = app.test_client(), app.extensions["model_server"]
    warm_up_passes = len(fake_forward.batch_sizes)
    fake_forward.gate.clear()
    fake_forward.entered.clear()
    first = BackgroundPost(client, make_rows(1))
    try:
        assert fake_forward.entered.wait(10)  # the first request holds the model
        late = BackgroundPost(client, make_rows(2), {"X-Request-Timeout-Ms": "1"})
        wait_for_queue_depth(server, 2)  # queued behind the running pass
        queued_at = time.monotonic()
        while time.monotonic() < queued_at + 0.005:  # let its 1 ms deadline pass, by the clock
            threading.Event().wait(0.001)
    finally:
        fake_forward.gate.set()
        first.join(10)
    late.join(10)
    assert "deadline passed" in error_of(late.answer, 504)
    assert fake_forward.batch_sizes[warm_up_passes:] == [1]  # the late request's rows never reached the model
    assert server.sole.batcher.stats.expired == 1
    server.close()


def test_the_servers_request_timeout_caps_the_clients_and_is_the_batchers_default_budget(settings, fake_model):
    from service.pipeline.inference import request_timeout_s

    timed = dataclasses.replace(settings, request_timeout_ms=500)
    assert request_timeout_s(timed, None) == 0.5
    assert request_timeout_s(timed, "100") == 0.1
    assert request_timeout_s(timed, "9000") == 0.5
    app = create_app(timed, fake_model)
    assert app.extensions["model_server"].sole.batcher.admission.default_budget_s == 0.5
    app.extensions["model_server"].close()
    app = create_app(dataclasses.replace(settings, latency_slo_ms=200), fake_model)
    assert app.extensions["model_server"].sole.batcher.admission.default_budget_s == 0.2, "else the objective"
    app.extensions["model_server"].close()


def test_overload_is_refused_at_the_door_and_readyz_sheds_until_the_queue_drains(
    settings, fake_model, fake_forward, make_rows
):
    from service.batching.cost_model import CostModel

    app = create_app(dataclasses.replace(settings, concurrent_batches=1, latency_slo_ms=100), fake_model)
    client, server = app.test_client(), app.extensions["model_server"]
    server.sole.batcher.observations.cost_model = CostModel({1: 0.03, 2: 0.05, 4: 0.08, 8: 2.0})  # a slow model
    fake_forward.gate.clear()
    fake_forward.entered.clear()

    threads = [BackgroundPost(client, make_rows(8))]
    try:
        assert fake_forward.entered.wait(10)  # a pass of 8, expected to take 2 s, running and held
        refused_before = rejected("deadline_unreachable")
        # Waiting for the running pass makes any request later than the 100 ms objective.
        answer = client.post("/predict", json={"instances": make_rows(1)})
        assert "deadline cannot be met" in error_of(answer, 503)
        assert 2 <= int(answer.headers["Retry-After"]) <= 5  # the running pass's ~2 s and one more full pass
        assert rejected("deadline_unreachable") == refused_before + 1
        overloaded = client.get("/readyz")
        assert overloaded.status_code == 503 and overloaded.json["status"] == "overloaded"
        patient = BackgroundPost(client, make_rows(1), {"X-Request-Timeout-Ms": "5000"})  # within its own budget
        threads.append(patient)
        wait_for_queue_depth(server, 1)
    finally:
        fake_forward.gate.set()
        for thread in threads:
            thread.join(10)
    assert patient.answer.status_code == 200
    assert client.get("/readyz").status_code == 200  # drained: ready again
    server.close()


def test_without_an_objective_a_request_that_must_wait_is_accepted_and_readyz_sheds_only_when_full(
    settings, fake_model, fake_forward, make_rows
):
    from service.batching.cost_model import CostModel

    assert settings.latency_slo_ms == 0  # the default: no objective
    app = create_app(dataclasses.replace(settings, concurrent_batches=1), fake_model)
    client, server = app.test_client(), app.extensions["model_server"]
    server.sole.batcher.observations.cost_model = CostModel({1: 0.03, 2: 0.05, 4: 0.08, 8: 2.0})  # a slow model
    fake_forward.gate.clear()
    fake_forward.entered.clear()
    refused_before = rejected("deadline_unreachable")
    threads = [BackgroundPost(client, make_rows(8))]
    try:
        assert fake_forward.entered.wait(10)  # a pass expected to take 2 s, running and held
        threads += [BackgroundPost(client, make_rows(1)), BackgroundPost(client, make_rows(8))]
        wait_for_queue_depth(server, 9)  # accepted behind it, whatever the wait
        assert client.get("/readyz").status_code == 200  # room for more
        threads.append(BackgroundPost(client, make_rows(7)))
        wait_for_queue_depth(server, 16)  # the limit
        full = client.get("/readyz")
        assert full.status_code == 503 and "already waiting (limit 16)" in full.json["error"]
    finally:
        fake_forward.gate.set()
        for thread in threads:
            thread.join(10)
    assert [thread.answer.status_code for thread in threads] == [200, 200, 200, 200]
    assert rejected("deadline_unreachable") == refused_before
    assert client.get("/readyz").status_code == 200
    server.close()
