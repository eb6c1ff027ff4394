"""The model's status and metadata routes (TensorFlow Serving's REST API), health checks, stats and metrics.

The predict routes are not here: they are the hot path and skip Flask (predict_endpoint.py).
"""

from __future__ import annotations

import os

import orjson
from flask import Blueprint, Response, current_app, request
from werkzeug.routing import BaseConverter

from service.batching.batcher import DeadlineUnreachable, QueueFull
from service.operations import metrics
from service.web.access import ROUTE_KEY, route_template

blueprint = Blueprint("serving", __name__)


class ModelNameConverter(BaseConverter):
    """A model name stops at ':' so `/v1/models/m:predict` never reads as a model called `m:predict`."""

    regex = "[^/:]+"


@blueprint.before_app_request
def label_route():
    """Name the matched route for the access layer's metrics and log (unmatched paths stay unlabelled)."""
    if request.url_rule is not None:
        request.environ[ROUTE_KEY] = route_template(request.url_rule.rule)


def _state():
    return current_app.extensions["model_server"]


def _json(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@blueprint.get("/v1/models/<model_name:name>")
@blueprint.get("/v1/models/<model_name:name>/versions/<int:version>")
def model_status(name: str, version: int | None = None):
    state = _state()
    state.model_for(name, version)
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
    return _json(_state().model_for(name, version).metadata())


@blueprint.get("/healthz")
def healthz():
    return _json({"status": "alive"})


@blueprint.get("/readyz")
def readyz():
    state = _state()
    if not state.ready:
        return _json({"status": "not ready", "error": "the model is loading or the worker is shutting down"}, 503)
    try:  # shed: while a request would be refused, let the load balancer send work elsewhere
        state.batcher.check_room(1, state.settings.latency_slo_s)
    except (QueueFull, DeadlineUnreachable) as error:
        return _json({"status": "overloaded", "error": f"a new request would be refused: {error}"}, 503)
    return _json({"status": "ready", "model": state.model.name, "version": state.model.version})


@blueprint.get("/stats")
def stats():
    """This worker's batching: its policy, what it has learned and why it sent its batches (per worker, not summed)."""
    state = _state()
    return _json(
        {"pid": os.getpid(), "model": state.model.name, "version": state.model.version, **state.batcher.describe()}
    )


@blueprint.get("/metrics")
def prometheus_metrics():
    """Every worker's metrics in Prometheus' text format, whichever worker answers the scrape."""
    body, content_type = metrics.exposition()
    return Response(body, mimetype=None, content_type=content_type)
