"""TensorFlow Serving's REST API: predict, model status and model metadata.

The predict routes are the service's one hot path. On a CPU machine every request's Python
work takes CPU from the forward pass it waits for (BENCHMARKS.md), and Flask's request
machinery alone costs about 85 us a request. So `PredictEndpoint` matches them with one
regular expression and serves them as plain WSGI in front of Flask; every other path goes to
Flask unchanged, where `blueprint` has the status and metadata routes. Each request goes
through named stages: decode (on the request's own thread or greenlet), batch and predict (in
the batcher's thread), then encode (back on the request's thread).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

import orjson
from flask import Blueprint
from werkzeug.routing import BaseConverter

from service.batching.bulk import predict_instances
from service.errors import MethodNotAllowed, WsgiApp, render, write_json
from service.model_server import ModelServer, current_server, json_response
from service.protocols.common import (
    InferenceTarget,
    NotReady,
    TakeTurns,
    admission_budget_s,
    api_error_for,
    forward_pass_failures,
    read_body,
    request_timeout_s,
)
from service.protocols.tfserving_codec import decode_request, encode_response
from service.web.access import BATCH_SIZE_KEY, REFUSED_KEY, ROUTE_KEY

PROTOCOL = "tfserving_rest"
PREDICT_ROUTES = ("/predict", "/v1/models/{name}:predict", "/v1/models/{name}/versions/{version}:predict")
PREDICT_PATH = re.compile(r"/predict|/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,9}))?:predict")


def match_inference(path: str) -> InferenceTarget | None:
    """The predict route `path` names, with its model and version; None for any other path."""
    match = PREDICT_PATH.fullmatch(path)
    if match is None:
        return None
    name, version = match["name"], match["version"]
    if name is None:
        return InferenceTarget(PREDICT_ROUTES[0], None, None)
    if version is None:
        return InferenceTarget(PREDICT_ROUTES[1], name, None)
    return InferenceTarget(PREDICT_ROUTES[2], name, int(version))


class PredictEndpoint:
    """WSGI middleware: `POST` to a predict path is answered here, anything else by `fallback`."""

    def __init__(self, server: ModelServer, fallback: WsgiApp):
        self._server = server
        self._fallback = fallback

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        target = match_inference(environ.get("PATH_INFO", ""))
        if target is None:
            return self._fallback(environ, start_response)
        environ[ROUTE_KEY] = target.route
        try:
            status, body, headers = 200, *self._predict(target, environ)
        except Exception as error:
            answer = api_error_for(error, self._server)
            if getattr(answer, "reason", None) is not None:
                environ[REFUSED_KEY] = answer.reason
            status, body, headers = render(answer)
        return write_json(start_response, status, body, headers)

    def _predict(self, target: InferenceTarget, environ: dict) -> tuple[bytes, dict[str, str]]:
        received_at = time.monotonic()
        if environ["REQUEST_METHOD"] != "POST":
            raise MethodNotAllowed(f"{environ['REQUEST_METHOD']} is not allowed here; predict takes POST", "POST")
        server = self._server
        model = server.model_for(target.model_name, target.version)
        timeout_s = request_timeout_s(server.settings, environ.get("HTTP_X_REQUEST_TIMEOUT_MS"))
        budget_s = admission_budget_s(server.settings, timeout_s)
        if not server.ready:
            raise NotReady
        cache, body = server.cache, None
        if cache is not None:  # a repeated body needs no room in the batcher: answer it before asking for any
            body = read_body(environ, server.settings.max_body_bytes)
            if (kept := cache.repeated_answer(PROTOCOL, body)) is not None:
                environ[BATCH_SIZE_KEY] = 0
                return kept[0], {"X-Batch-Size": "0"}
        # Before the body is decoded: a refusal under overload must cost far less than the work.
        server.batcher.check_room(1, budget_s)
        if body is None:
            body = read_body(environ, server.settings.max_body_bytes)
        decoded = decode_request(
            body,
            model.signature,
            server.settings.max_request_instances,
            TakeTurns(),
        )
        spent_s = time.monotonic() - received_at  # reading and decoding the body took some of the time allowed
        with forward_pass_failures():
            outcome = predict_instances(
                server.batcher,
                server.cache,
                decoded.inputs,
                decoded.count,
                timeout_s - spent_s if timeout_s is not None else None,
                budget_s - spent_s if budget_s is not None else None,
            )
        environ[BATCH_SIZE_KEY] = outcome.batch_size
        answer = orjson.dumps(encode_response(outcome.result, decoded.layout))
        if cache is not None and outcome.batch_size == 0 and decoded.count <= server.batcher.max_batch_size:
            cache.keep_answer(PROTOCOL, body, answer, decoded.count)  # seen twice: likely to be seen again
        return answer, {"X-Batch-Size": str(outcome.batch_size)}


endpoint = PredictEndpoint

blueprint = Blueprint("tfserving_rest", __name__)


class ModelNameConverter(BaseConverter):
    """A model name stops at ':' so `/v1/models/m:predict` never reads as a model called `m:predict`."""

    regex = "[^/:]+"


@blueprint.record_once
def _register_converter(state) -> None:
    state.app.url_map.converters["model_name"] = ModelNameConverter


@blueprint.get("/v1/models/<model_name:name>")
@blueprint.get("/v1/models/<model_name:name>/versions/<int:version>")
def model_status(name: str, version: int | None = None):
    server = current_server()
    server.model_for(name, version)
    available = "AVAILABLE" if server.ready else "LOADING"
    ok = {"error_code": "OK", "error_message": ""}
    return json_response(
        {"model_version_status": [{"version": str(server.model.version), "state": available, "status": ok}]}
    )


@blueprint.get("/v1/models/<model_name:name>/metadata")
@blueprint.get("/v1/models/<model_name:name>/versions/<int:version>/metadata")
def model_metadata(name: str, version: int | None = None):
    return json_response(current_server().model_for(name, version).metadata())
