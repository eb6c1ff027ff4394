"""Routes for operators and load balancers, whatever the protocol: health checks, stats and metrics."""

from __future__ import annotations

import os

from flask import Blueprint, Response

from service.batching.admission import DeadlineUnreachable
from service.batching.requests import QueueFull
from service.pipeline.model_server import current_server, json_response
from service.telemetry import metrics

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz():
    return json_response({"status": "alive"})


@blueprint.get("/readyz")
def readyz():
    state = current_server()
    if not state.ready:
        return json_response(
            {"status": "not ready", "error": "the model is loading or the worker is shutting down"}, 503
        )
    try:  # shed: while a request would be refused, let the load balancer send work elsewhere
        state.batcher.check_room(1, state.settings.latency_slo_s)
    except (QueueFull, DeadlineUnreachable) as error:
        return json_response({"status": "overloaded", "error": f"a new request would be refused: {error}"}, 503)
    return json_response({"status": "ready", "model": state.model.name, "version": state.model.version})


@blueprint.get("/stats")
def stats():
    """This worker's batching: its policy, what it has learned and why it sent its batches (per worker, not summed)."""
    state = current_server()
    return json_response(
        {"pid": os.getpid(), "model": state.model.name, "version": state.model.version, **state.batcher.describe()}
    )


@blueprint.get("/metrics")
def prometheus_metrics():
    """Every worker's metrics in Prometheus' text format, whichever worker answers the scrape."""
    body, content_type = metrics.exposition()
    return Response(body, mimetype=None, content_type=content_type)
