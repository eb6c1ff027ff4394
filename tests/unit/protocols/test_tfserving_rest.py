"""The predict hot path as raw WSGI: what the test client cannot send (no Content-Length, a bad one)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import pytest

from service import protocols
from service.app import create_app
from service.pipeline.inference import InferenceTarget
from service.protocols.tfserving_rest import PROTOCOL as REST
from service.protocols.tfserving_rest import match_inference
from tests.support import rows


def call(app, path: str, body: bytes = b"", method: str = "POST", content_length: str | None = None, body_stream=None):
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": body_stream or io.BytesIO(body),
    }
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

    chunks = app.wsgi_app(environ, start_response)
    answer["body"] = json.loads(b"".join(chunks))
    getattr(chunks, "close", lambda: None)()
    return answer


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/predict", InferenceTarget(REST, "/predict", None, None)),
        ("/v1/models/m:predict", InferenceTarget(REST, "/v1/models/{name}:predict", "m", None)),
        (
            "/v1/models/m/versions/7:predict",
            InferenceTarget(REST, "/v1/models/{name}/versions/{version}:predict", "m", 7),
        ),
    ],
)
def test_the_three_predict_paths_and_nothing_else_are_inference_targets(path, target):
    assert match_inference(path) == target
    assert protocols.match_inference(path) == target, "the registry asks TF Serving REST"
    for other in ["/predictions", "/v1/models/m", "/v1/models/m:predict/x", "/v1/models/a/b:predict", "/healthz"]:
        assert match_inference(other) is None and protocols.match_inference(other) is None


def test_body_without_content_length_is_read_up_to_the_limit(app, make_rows):
    body = json.dumps({"instances": make_rows(2)}).encode()
    answer = call(app, "/predict", body)
    assert answer["status"] == 200 and len(answer["body"]["predictions"]) == 2
    too_long = call(app, "/predict", b" " * 4097)  # MAX_BODY_BYTES is 4096 in the test settings
    assert too_long["status"] == 413 and "4096" in too_long["body"]["error"]


def test_declared_length_over_the_limit_is_refused_before_reading(app):
    answer = call(app, "/predict", b"", content_length="999999999")
    assert answer["status"] == 413 and "999999999 bytes" in answer["body"]["error"]


@pytest.mark.parametrize("declared", ["-1", "12x", "²"])
def test_malformed_content_length_gets_400(app, declared):
    answer = call(app, "/predict", b"{}", content_length=declared)
    assert answer["status"] == 400 and "Content-Length" in answer["body"]["error"]


def test_other_methods_on_predict_paths_get_405_naming_post(app):
    answer = call(app, "/v1/models/fake/versions/1:predict", method="PUT")
    assert answer["status"] == 405 and answer["headers"]["Allow"] == "POST"


def test_a_version_too_long_for_the_fast_path_falls_through_to_a_json_404(app):
    answer = call(app, "/v1/models/fake/versions/" + "9" * 5000 + ":predict", b"{}")
    assert answer["status"] == 404 and answer["body"]["error"]


class UnreadableBody(io.RawIOBase):
    """A body that fails the test if anything reads it."""

    def read(self, size=-1):
        raise AssertionError("the body was read")


def test_a_full_queue_refuses_before_reading_the_body_and_logs_no_access_line(app, caplog):
    server = app.extensions["model_server"]
    server.sole.batcher._queued_instances = server.sole.batcher.max_queue  # as if the queue were full
    try:
        with caplog.at_level(logging.INFO):
            answer = call(app, "/predict", content_length="64", body_stream=UnreadableBody())
    finally:
        server.sole.batcher._queued_instances = 0
    assert answer["status"] == 503 and "queue is full" in answer["body"]["error"]
    assert int(answer["headers"]["Retry-After"]) >= 1
    assert not [record for record in caplog.records if getattr(record, "event", None) == "access"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


class StalledBody(io.RawIOBase):
    """A body whose socket timed out: the client stopped sending it."""

    def read(self, size=-1):
        raise TimeoutError("timed out")


def test_a_body_that_stops_arriving_gets_408(app):
    answer = call(app, "/predict", content_length="64", body_stream=StalledBody())
    assert answer["status"] == 408 and "stopped arriving" in answer["body"]["error"]


@pytest.fixture
def cached_app(settings, fake_model, tmp_path):
    model_file = tmp_path / "fake.keras"
    model_file.write_bytes(b"weights")
    app = create_app(dataclasses.replace(settings, cache_max_bytes=1 << 20, model_path=str(model_file)), fake_model)
    yield app
    app.extensions["model_server"].close()


def test_a_body_answered_from_the_cache_is_then_answered_whole_even_when_the_queue_is_full(cached_app, fake_forward):
    body = json.dumps({"instances": rows(2)}).encode()
    passes_before = len(fake_forward.batch_sizes)  # the warm-up's
    computed = call(cached_app, "/predict", body)
    assert computed["status"] == 200 and int(computed["headers"]["X-Batch-Size"]) >= 1
    assert call(cached_app, "/predict", body)["headers"]["X-Batch-Size"] == "0", "its instances were cached"
    server = cached_app.extensions["model_server"]
    server.sole.batcher._queued_instances = server.sole.batcher.max_queue  # as if the queue were full
    try:
        again = call(cached_app, "/predict", body)
        new = call(cached_app, "/predict", json.dumps({"instances": rows(2, start=10)}).encode())
    finally:
        server.sole.batcher._queued_instances = 0
    assert again["status"] == 200 and again["headers"]["X-Batch-Size"] == "0"
    assert again["body"] == computed["body"]
    assert new["status"] == 503, "what must be computed still needs room"
    assert len(fake_forward.batch_sizes) - passes_before == 1
