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

import orjson
from flask import Blueprint
from werkzeug.routing import BaseConverter

from service.backends.base import Arrays, ServedModel
from service.pipeline.body import TakeTurns
from service.pipeline.inference import InferenceEndpoint, InferenceTarget
from service.pipeline.model_server import ModelServer, current_server, json_response
from service.protocols.tfserving_codec import DecodedRequest, decode_request, encode_response

PROTOCOL = "tfserving_rest"
INFERENCE_ROUTES = (
    "/predict",
    "/v1/models/{name}:predict",
    "/v1/models/{name}/versions/{version}:predict",
    "/v1/models/{name}/labels/{label}:predict",
)
PREDICT_PATH = re.compile(
    r"/predict|/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]{1,9})|/labels/(?P<label>[A-Za-z0-9_]{1,64}))?:predict"
)


def match_inference(path: str) -> InferenceTarget | None:
    """The predict route `path` names, with its model and version or label; None for any other path."""
    match = PREDICT_PATH.fullmatch(path)
    if match is None:
        return None
    name, version, label = match["name"], match["version"], match["label"]
    if name is None:
        return InferenceTarget(PROTOCOL, INFERENCE_ROUTES[0], None, None)
    if version is not None:
        return InferenceTarget(PROTOCOL, INFERENCE_ROUTES[2], name, int(version))
    if label is not None:
        return InferenceTarget(PROTOCOL, INFERENCE_ROUTES[3], name, None, label)
    return InferenceTarget(PROTOCOL, INFERENCE_ROUTES[1], name, None)


class PredictEndpoint(InferenceEndpoint):
    """TF Serving's predict, row (`instances`) or columnar (`inputs`), answered in the layout it came in."""

    protocol = PROTOCOL
    match_inference = staticmethod(match_inference)

    def decode(self, body: bytes, environ: dict, model: ServedModel) -> DecodedRequest:
        return decode_request(
            body, model.signature, self._server.settings_for(model).max_request_instances, TakeTurns()
        )

    def encode(self, decoded: DecodedRequest, result: Arrays, model: ServedModel) -> tuple[bytes, dict[str, str]]:
        return orjson.dumps(encode_response(result, decoded.layout)), {}


endpoint = PredictEndpoint

blueprint = Blueprint(PROTOCOL, __name__)


class ModelNameConverter(BaseConverter):
    """A model name stops at ':' so `/v1/models/m:predict` never reads as a model called `m:predict`."""

    regex = "[^/:]+"


@blueprint.record_once
def _register_converter(state) -> None:
    state.app.url_map.converters["model_name"] = ModelNameConverter


@blueprint.get("/v1/models")
def models():
    """Every served model with its versions' statuses (TF Serving has no such route; its users script one), and
    each configured model that does not serve with why."""
    server = current_server()
    listed = [{"name": name, **describe_status(server, name, None)} for name in server.models]
    return json_response({"models": listed, "unavailable": server.unavailable})


@blueprint.get("/v1/models/<model_name:name>")
@blueprint.get("/v1/models/<model_name:name>/versions/<int:version>")
@blueprint.get("/v1/models/<model_name:name>/labels/<label>")
def model_status(name: str, version: int | None = None, label: str | None = None):
    return json_response(describe_status(current_server(), name, version, label))


def describe_status(server: ModelServer, name: str | None, version: int | None, label: str | None = None) -> dict:
    """TF Serving's model status (`GetModelStatusResponse` in its JSON form): every version's, or the one named.

    A version that failed to load is in END with its error. Once the worker shuts down (it
    admits nothing more), the versions it served read UNLOADING.
    """
    versions = server.hosted(name, load=False).versions  # a status asks what is: a model not loaded is not loaded
    if label is not None:
        version = versions.version_of(label)
    statuses = versions.statuses(version)
    if not server.ready:
        for status in statuses:
            if status["state"] == "AVAILABLE":
                status["state"] = "UNLOADING"
    return {"model_version_status": statuses}


@blueprint.get("/v1/models/<model_name:name>/metadata")
@blueprint.get("/v1/models/<model_name:name>/versions/<int:version>/metadata")
@blueprint.get("/v1/models/<model_name:name>/labels/<label>/metadata")
def model_metadata(name: str, version: int | None = None, label: str | None = None):
    return json_response(current_server().model_for(name, version, label).metadata())
