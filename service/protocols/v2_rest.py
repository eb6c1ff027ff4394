"""The Open Inference Protocol (KServe V2) over REST: health, server and model metadata, readiness, infer.

What Triton's, KServe's and MLServer's clients speak. Infer is an `InferenceEndpoint` in front of
Flask, as TF Serving's predict is, so both protocols' requests join the same batches; the other
routes are in `blueprint`. Errors are `{"error": "<what was wrong>"}`, as the protocol asks.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response

from service import __version__
from service.backends.base import Arrays, ServedModel
from service.pipeline.inference import InferenceEndpoint, InferenceTarget
from service.pipeline.model_server import current_server, json_response
from service.protocols.v2_codec import InferRequest, datatype_of, decode_infer_request, encode_infer_response
from service.versions.registry import VersionState

PROTOCOL = "v2_rest"
INFERENCE_ROUTES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[0-9]{1,9}))?/infer")
EXTENSIONS = ("binary_tensor_data",)


def match_inference(path: str) -> InferenceTarget | None:
    """The infer route `path` names, with its model and version; None for any other path."""
    match = INFER_PATH.fullmatch(path)
    if match is None:
        return None
    if match["version"] is None:
        return InferenceTarget(PROTOCOL, INFERENCE_ROUTES[0], match["name"], None)
    return InferenceTarget(PROTOCOL, INFERENCE_ROUTES[1], match["name"], int(match["version"]))


class InferEndpoint(InferenceEndpoint):
    """V2 infer: JSON tensors, or binary ones after a JSON header (Inference-Header-Content-Length)."""

    protocol = PROTOCOL
    match_inference = staticmethod(match_inference)

    def decode(self, body: bytes, environ: dict, model: ServedModel) -> InferRequest:
        header_length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
        return decode_infer_request(
            body, header_length, model.signature, self._server.settings_for(model).max_request_instances
        )

    def encode(self, decoded: InferRequest, result: Arrays, model: ServedModel) -> tuple[bytes, dict[str, str]]:
        body, header_length = encode_infer_response(model.name, model.version, decoded, result)
        if header_length is None:
            return body, {}
        return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}


endpoint = InferEndpoint

blueprint = Blueprint(PROTOCOL, __name__)


@blueprint.get("/v2/health/live")
def live():
    return Response(status=200)


@blueprint.get("/v2/health/ready")
def ready():
    return Response(status=200 if current_server().ready else 503)


@blueprint.get("/v2")
def server_metadata():
    return json_response({"name": "tf-model-server", "version": __version__, "extensions": list(EXTENSIONS)})


@blueprint.post("/v2/repository/index")
def repository_index():
    """Triton's model repository index: every version of every model, with its state (READY, or why not)."""
    server = current_server()
    index = []
    for name, hosted in server.models.items():
        for status in hosted.versions.statuses(None):
            ready = status["state"] == "AVAILABLE" and server.ready
            entry = {"name": name, "version": status["version"], "state": "READY" if ready else "UNAVAILABLE"}
            if not ready:
                entry["reason"] = status["status"]["error_message"] or status["state"]
            index.append(entry)
    return json_response(index)


@blueprint.get("/v2/models/<name>")
@blueprint.get("/v2/models/<name>/versions/<int:version>")
def model_metadata(name: str, version: int | None = None):
    server = current_server()
    model = server.model_for(name, version)

    def tensors(infos) -> list[dict]:
        return [{"name": info.name, "datatype": datatype_of(info), "shape": info.describe()["shape"]} for info in infos]

    return json_response(
        {
            "name": model.name,
            "versions": [
                str(number) for number in sorted(server.hosted(name).versions.numbers(VersionState.AVAILABLE))
            ],
            "platform": model.platform,
            "inputs": tensors(model.signature.inputs),
            "outputs": tensors(model.signature.outputs),
        }
    )


@blueprint.get("/v2/models/<name>/ready")
@blueprint.get("/v2/models/<name>/versions/<int:version>/ready")
def model_ready(name: str, version: int | None = None):
    server = current_server()
    server.model_for(name, version)
    return Response(status=200 if server.ready else 503)
