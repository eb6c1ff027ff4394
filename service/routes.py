"""HTTP routes, compatible with TensorFlow Serving's REST API.

Each predict request goes through named stages: decode (on the request's own thread),
batch and predict (in the batcher's thread), then encode (back on the request's thread).
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request
from werkzeug.routing import BaseConverter

from service.batcher import BatcherClosed, QueueFull
from service.codec import decode_request, encode_response
from service.errors import ApiError, NotFound, ServiceUnavailable

blueprint = Blueprint("serving", __name__)


class ModelNameConverter(BaseConverter):
    """A model name stops at ':' so `/v1/models/m:predict` never reads as a model called `m:predict`."""

    regex = "[^/:]+"


def _state():
    return current_app.extensions["model_server"]


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _check_model(name: str | None, version: int | None):
    state = _state()
    if name is not None and name != state.model.name:
        raise NotFound(f"model {name!r} is not served here; this server serves {state.model.name!r}")
    if version is not None and version != state.model.version:
        raise NotFound(f"model {state.model.name!r} has no version {version}; it serves version {state.model.version}")
    return state


@blueprint.post("/predict")
@blueprint.post("/v1/models/<model_name:name>:predict")
@blueprint.post("/v1/models/<model_name:name>/versions/<int:version>:predict")
def predict(name: str | None = None, version: int | None = None):
    state = _check_model(name, version)
    if not state.ready:
        raise ServiceUnavailable("the model is not ready yet")
    decoded = decode_request(request.get_data(cache=False), state.model.signature, state.settings.max_batch_size)
    try:
        completion = state.batcher.submit(decoded.inputs, decoded.count)
    except QueueFull as error:
        raise ServiceUnavailable(f"this worker's queue is full: {error}") from None
    except BatcherClosed:
        raise ServiceUnavailable("the server is shutting down") from None
    try:
        outcome = completion.wait()
    except Exception as error:
        raise ApiError(f"the forward pass failed: {type(error).__name__}: {error}") from error
    response = _json(encode_response(outcome.result, decoded.layout))
    response.headers["X-Batch-Size"] = str(outcome.batch_size)
    return response


@blueprint.get("/v1/models/<model_name:name>")
@blueprint.get("/v1/models/<model_name:name>/versions/<int:version>")
def model_status(name: str, version: int | None = None):
    state = _check_model(name, version)
    available = "AVAILABLE" if state.ready else "LOADING"
    return _json(
        {
            "model_version_status": [
                {
                    "version": str(state.model.version),
                    "state": available,
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }
    )


@blueprint.get("/v1/models/<model_name:name>/metadata")
@blueprint.get("/v1/models/<model_name:name>/versions/<int:version>/metadata")
def model_metadata(name: str, version: int | None = None):
    return _json(_check_model(name, version).model.metadata())


@blueprint.get("/healthz")
def healthz():
    return _json({"status": "alive"})


@blueprint.get("/readyz")
def readyz():
    state = _state()
    if state.ready:
        return _json({"status": "ready", "model": state.model.name, "version": state.model.version})
    return _json({"status": "not ready", "error": "the model is loading or the worker is shutting down"}, 503)
