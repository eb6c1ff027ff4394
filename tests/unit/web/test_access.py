"""The access layer: request ids, route labels, request metrics and one access event per request."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from service.web.access import route_template


def requests_counted(route: str, method: str, status: str, protocol: str = "tfserving_rest") -> float:
    labels = {"protocol": protocol, "route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("model_server_http_requests_total", labels) or 0.0


def access_events(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == "access"]


def test_a_request_id_is_generated_and_echoed(client):
    first, second = client.get("/healthz"), client.get("/healthz")
    assert len(first.headers["X-Request-ID"]) == 32
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


def test_the_clients_request_id_is_kept_when_usable(client, make_rows):
    answer = client.post("/predict", json={"instances": make_rows(1)}, headers={"X-Request-ID": "checkout-42/a"})
    assert answer.headers["X-Request-ID"] == "checkout-42/a"


@pytest.mark.parametrize("unusable", ["has space", "x" * 129, "tab\there"])
def test_an_unusable_request_id_is_replaced(client, unusable):
    answer = client.get("/healthz", headers={"X-Request-ID": unusable})
    assert answer.headers["X-Request-ID"] != unusable and len(answer.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize(
    ("method", "path", "route", "status"),
    [
        ("POST", "/predict", "/predict", "200"),
        ("POST", "/v1/models/fake:predict", "/v1/models/{name}:predict", "200"),
        ("POST", "/v1/models/fake/versions/1:predict", "/v1/models/{name}/versions/{version}:predict", "200"),
        ("POST", "/v1/models/other:predict", "/v1/models/{name}:predict", "404"),
        ("GET", "/v1/models/fake/metadata", "/v1/models/{name}/metadata", "200"),
        ("GET", "/v1/models/fake/versions/7", "/v1/models/{name}/versions/{version}", "404"),
        ("GET", "/no/such/route", "unmatched", "404"),
        ("GET", "/healthz", "/healthz", "200"),
        ("GET", "/v2/health/ready", "/v2/health/ready", "200"),
    ],
)
def test_requests_are_counted_by_protocol_route_template_and_status(client, make_rows, method, path, route, status):
    protocol = {"/v1": "tfserving_rest", "/pr": "tfserving_rest", "/v2": "v2_rest"}.get(path[:3], "http")
    before = requests_counted(route, method, status, protocol)
    client.open(path, method=method, json={"instances": make_rows(1)} if method == "POST" else None)
    assert requests_counted(route, method, status, protocol) == before + 1


def test_unknown_methods_and_paths_cannot_create_series(client):
    before = requests_counted("unmatched", "other", "404", "http")
    client.open("/made-up-path-1", method="BREW")
    client.open("/made-up-path-2", method="BREW2")
    assert requests_counted("unmatched", "other", "404", "http") == before + 2


def test_each_request_logs_one_access_event_with_its_id_route_status_and_batch(client, make_rows, caplog):
    caplog.set_level(logging.INFO, logger="model_server.access")
    answer = client.post("/v1/models/fake:predict", json={"instances": make_rows(3)}, headers={"X-Request-ID": "r1"})
    client.post("/predict", data=b"{not json")
    ok, bad = access_events(caplog)
    assert answer.status_code == 200
    assert ok.request_id == "r1" and len(bad.request_id) == 32
    assert (ok.method, ok.path, ok.protocol, ok.route, ok.status, ok.batch_size) == (
        "POST",
        "/v1/models/fake:predict",
        "tfserving_rest",
        "/v1/models/{name}:predict",
        200,
        3,
    )
    assert ok.duration_ms > 0 and (ok.model, ok.model_version) == ("fake", 1)
    assert (bad.status, bad.batch_size) == (400, None)


def test_route_template_uses_openapi_notation():
    assert (
        route_template("/v1/models/<model_name:name>/versions/<int:version>") == "/v1/models/{name}/versions/{version}"
    )
    assert route_template("/healthz") == "/healthz"


def test_metrics_endpoint_serves_prometheus_text(client, make_rows):
    client.post("/predict", json={"instances": make_rows(2)})
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.content_type.startswith("text/plain")
    text = answer.get_data(as_text=True)
    for name in (
        "model_server_http_requests_total",
        "model_server_http_request_duration_seconds_bucket",
        "model_server_batch_queue_wait_seconds_bucket",
        "model_server_forward_pass_seconds_bucket",
        "model_server_batch_size_instances_bucket",
        "model_server_batches_total",
        "model_server_queue_depth_instances",
        "model_server_instances_in_flight",
        "model_server_workers_alive",
        'model_server_model_info{name="fake",version="1"} 1.0',
        "model_server_model_load_duration_seconds",
    ):
        assert name in text, name


def test_a_long_path_is_cut_in_the_access_log(client, caplog):
    caplog.set_level(logging.INFO, logger="model_server.access")
    client.get("/" + "x" * 10_000)
    (event,) = access_events(caplog)
    assert event.path == "/" + "x" * 255 + "..." and len(event.getMessage()) < 400
