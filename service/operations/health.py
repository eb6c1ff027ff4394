"""Routes for operators and load balancers, whatever the protocol: health checks, stats and metrics."""

from __future__ import annotations

import os

from flask import Blueprint, Response

from service.batching.admission import DeadlineUnreachable
from service.batching.requests import QueueFull
from service.pipeline.model_server import ModelServer, current_server, json_response
from service.telemetry import metrics

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz():
    return json_response({"status": "alive"})


def unready_reason(state: ModelServer) -> tuple[str, str] | None:
    """Why the worker should not be sent work now, as (status, error), or None while it should: the rule of
    `/readyz` and of gRPC's health service."""
    if not state.ready:
        return "not ready", "the model is loading or the worker is shutting down"
    refusals = {}
    for hosted in state.models.values():  # shed: while every model would refuse, send work elsewhere
        try:
            hosted.batcher.check_room(1, hosted.settings.latency_slo_s)
        except (QueueFull, DeadlineUnreachable) as error:
            refusals[hosted.name] = str(error)
    if len(refusals) == len(state.models):
        reasons = "; ".join(f"{name}: {reason}" for name, reason in refusals.items())
        return "overloaded", f"a new request would be refused: {reasons}"
    return None


@blueprint.get("/readyz")
def readyz():
    state = current_server()
    unready = unready_reason(state)
    if unready is not None:
        return json_response({"status": unready[0], "error": unready[1]}, 503)
    latest = {name: hosted.versions.latest().version for name, hosted in state.models.items()}
    sole = {"model": next(iter(latest)), "version": next(iter(latest.values()))} if len(latest) == 1 else {}
    return json_response({"status": "ready", **sole, "models": latest})


@blueprint.get("/stats")
def stats():
    """This worker's batching per model: its policy, what it has learned and why it sent its batches (per worker,
    not summed). The sole model's is also at the top level."""
    state = current_server()
    models = {
        name: {"version": hosted.versions.latest().version, **hosted.batcher.describe()}
        for name, hosted in state.models.items()
    }
    sole = {"model": next(iter(models)), **next(iter(models.values()))} if len(models) == 1 else {}
    return json_response({"pid": os.getpid(), **sole, "models": models})


@blueprint.get("/metrics")
def prometheus_metrics():
    """Every worker's metrics in Prometheus' text format, whichever worker answers the scrape."""
    body, content_type = metrics.exposition()
    return Response(body, mimetype=None, content_type=content_type)
