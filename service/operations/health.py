"""Routes for operators and load balancers, whatever the protocol: health checks, stats and metrics."""

from __future__ import annotations

import os

import orjson
from flask import Blueprint, Response, current_app

from service.batching.admission import DeadlineUnreachable
from service.batching.requests import QueueFull
from service.operations import metrics

blueprint = Blueprint("health", __name__)


def _state():
    return current_app.extensions["model_server"]


def _json(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


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
