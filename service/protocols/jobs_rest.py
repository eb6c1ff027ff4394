"""The jobs API: submit a predict body as a background job, follow it, read its result, cancel it.

    POST   /v1/models/<name>[/versions/<v>]/jobs[?priority=<0-9>]   202, Location: /v1/jobs/<id>
    GET    /v1/jobs/<id>            state, progress, times, error
    GET    /v1/jobs/<id>/result     the predictions, in order (409 until the job is done)
    DELETE /v1/jobs/<id>            cancel: a queued job never runs; a running one stops before its next batch

A body is checked as predict checks it (same 4xx) before anything is queued. Results stay for
JOB_RESULTS_TTL_S, however often they are read.
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, request

from service.client_numbers import whole_number
from service.errors import BadRequest
from service.pipeline.body import TakeTurns, read_body
from service.pipeline.model_server import current_server, json_response
from service.protocols.tfserving_codec import decode_request, encode_response

MAX_PRIORITY = 9  # priorities 0 (the default) to 9; a higher one is taken from the queue first

blueprint = Blueprint("jobs", __name__)


@blueprint.post("/v1/models/<model_name:name>/jobs")
@blueprint.post("/v1/models/<model_name:name>/versions/<int:version>/jobs")
def submit(name: str, version: int | None = None):
    server = current_server()
    model = server.model_for(name, version)
    priority = _priority(request.args.get("priority", "0"))
    settings = server.settings
    body = read_body(request.environ, settings.max_job_body_bytes)
    decoded = decode_request(body, model.signature, settings.max_job_instances, TakeTurns())
    job = server.jobs.submit(
        model.name, model.version, decoded.layout, decoded.inputs, decoded.count, priority, pinned=version is not None
    )
    answer = json_response(job.describe(), status=202)
    answer.headers["Location"] = f"/v1/jobs/{job.id}"
    return answer


@blueprint.get("/v1/jobs/<job_id>")
def status(job_id: str):
    jobs = current_server().jobs
    return json_response(jobs.describe(jobs.get(job_id)))


@blueprint.get("/v1/jobs/<job_id>/result")
def result(job_id: str):
    job, outputs = current_server().jobs.result(job_id)
    return Response(orjson.dumps(encode_response(outputs, job.layout)), mimetype="application/json")


@blueprint.delete("/v1/jobs/<job_id>")
def cancel(job_id: str):
    jobs = current_server().jobs
    return json_response(jobs.describe(jobs.cancel(job_id)))


def _priority(text: str) -> int:
    priority = whole_number(text, MAX_PRIORITY)
    if priority is None:
        raise BadRequest(f"priority must be an integer from 0 to {MAX_PRIORITY}, got {text[:40]!r}")
    return priority
