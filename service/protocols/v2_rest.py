"""The Open Inference Protocol (KServe V2) over REST: health, server and model metadata, readiness, infer.

What Triton's, KServe's and MLServer's clients speak. Infer is an `InferenceEndpoint` in front of
Flask, as TF Serving's predict is, so both protocols' requests join the same batches; the other
routes are in `blueprint`. Errors are `{"error": "<what was wrong>"}`, as the protocol asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson
from flask import Blueprint, Response, request

from service import __version__
from service.backends.base import Arrays, ServedModel
from service.errors import BadRequest, Conflict
from service.pipeline.body import read_body
from service.pipeline.inference import InferenceEndpoint, InferenceTarget
from service.pipeline.model_server import HostedModel, ModelServer, Repository, current_server, json_response
from service.protocols.v2_codec import InferRequest, datatype_of, decode_infer_request, encode_infer_response
from service.telemetry.statistics import model_statistics
from service.versions.registry import VersionState

PROTOCOL = "v2_rest"
INFERENCE_ROUTES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[0-9]{1,9}))?/infer")
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics", "model_configuration")


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
    return json_response(describe_server())


def describe_server() -> dict:
    return {"name": "tf-model-server", "version": __version__, "extensions": list(EXTENSIONS)}


@blueprint.post("/v2/repository/index")
def repository_index():
    return json_response(index_entries(current_server()))


def index_entries(server: ModelServer) -> list[dict]:
    """Triton's model repository index: every version of every model, with its state (READY, or why not).

    A configured model that does not serve (it failed to load, or was unloaded) is listed without
    a version, UNAVAILABLE, with the reason.
    """
    index = []
    for name, hosted in server.models.items():
        for status in hosted.versions.statuses(None):
            ready = status["state"] == "AVAILABLE" and server.ready
            entry = {"name": name, "version": status["version"], "state": "READY" if ready else "UNAVAILABLE"}
            if not ready:
                entry["reason"] = status["status"]["error_message"] or status["state"]
            index.append(entry)
    index += [{"name": name, "state": "UNAVAILABLE", "reason": why} for name, why in server.unavailable.items()]
    return sorted(index, key=lambda entry: entry["name"])


@blueprint.post("/v2/repository/models/<name>/load")
def load_model(name: str):
    """Triton's model load: serve the model as its files say now, in every worker (this one before answering)."""
    _repository_call_options(allowed=())
    repository_of(current_server()).load(name)
    return json_response({})


@blueprint.post("/v2/repository/models/<name>/unload")
def unload_model(name: str):
    """Triton's model unload: stop routing to it, answer what it took, release it; in every worker."""
    _repository_call_options(allowed=("unload_dependents",))  # a model here has no dependents
    repository_of(current_server()).unload(name)
    return json_response({})


def repository_of(server: ModelServer) -> Repository:
    """The server's repository of models; Conflict for a server of one model."""
    repository = server.repository
    if repository is None:
        raise Conflict(
            "this server serves one model (MODEL_PATH or MODEL_BASE_PATH); the repository API needs "
            "MODEL_REPOSITORY or MODEL_CONFIG_FILE"
        )
    return repository


def _repository_call_options(allowed: tuple[str, ...]) -> None:
    """A load or unload body is optional: `{"parameters": {...}}` with only the parameters this server honours."""
    body = read_body(request.environ, current_server().settings.max_body_bytes)
    if not body.strip():
        return
    try:
        options = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    parameters = options.get("parameters", {}) if isinstance(options, dict) and set(options) <= {"parameters"} else None
    if not isinstance(parameters, dict):
        raise BadRequest('the body must be {"parameters": {...}}, or empty')
    if "unload_dependents" in parameters and not isinstance(parameters["unload_dependents"], bool):
        raise BadRequest("parameters.unload_dependents must be true or false")
    check_repository_parameters(parameters, allowed)


def check_repository_parameters(names: Iterable[str], allowed: tuple[str, ...]) -> None:
    """BadRequest for a load or unload parameter other than `allowed` (over REST or gRPC)."""
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise BadRequest(
            f"parameters {unknown} are not supported here (a model's configuration is its files and "
            "settings.env; docs/models.md)"
        )


@blueprint.get("/v2/models/<name>")
@blueprint.get("/v2/models/<name>/versions/<int:version>")
def model_metadata(name: str, version: int | None = None):
    return json_response(describe_model(current_server(), name, version))


def describe_model(server: ModelServer, name: str, version: int | None) -> dict:
    """The model version's metadata: its versions served, platform, and inputs and outputs (NotFound: none)."""
    hosted = server.hosted(name)
    model = hosted.versions.serving(version)

    def tensors(infos) -> list[dict]:
        return [{"name": info.name, "datatype": datatype_of(info), "shape": info.describe()["shape"]} for info in infos]

    return {
        "name": model.name,
        "versions": [str(number) for number in _serving(hosted)],
        "platform": model.platform,
        "inputs": tensors(model.signature.inputs),
        "outputs": tensors(model.signature.outputs),
    }


@blueprint.get("/v2/models/<name>/ready")
@blueprint.get("/v2/models/<name>/versions/<int:version>/ready")
def model_ready(name: str, version: int | None = None):
    """200 while the model serves; a model that loads on its first request is ready, and is not loaded for this."""
    return Response(status=200 if model_is_ready(current_server(), name, version) else 503)


def model_is_ready(server: ModelServer, name: str, version: int | None) -> bool:
    """Whether the worker serves the model version, or would load it for a request; NotFound for one it would not."""
    if version is not None or not server.loads_for_a_request(name):
        server.model_for(name, version)
    return server.ready


@blueprint.get("/v2/models/stats")
@blueprint.get("/v2/models/<name>/stats")
@blueprint.get("/v2/models/<name>/versions/<int:version>/stats")
def model_stats(name: str | None = None, version: int | None = None):
    """Triton's statistics extension: every model's, one model's (each version served) or one version's."""
    return json_response({"model_stats": statistics_of(current_server(), name, version)})


def statistics_of(server: ModelServer, name: str | None, version: int | None) -> list[dict]:
    """The statistics of the versions named (no name: every model's); NotFound for a model or version not served.

    Nothing is loaded for this: a model that loads on demand and is not loaded has none listed.
    """
    if not name:
        versions = [(each, number) for each, hosted in server.models.items() for number in _serving(hosted)]
        return model_statistics(sorted(versions))
    hosted = server.models.get(name)
    if hosted is None:
        if server.loads_for_a_request(name):
            return []
        server.hosted(name, load=False)  # NotFound, saying what is served
    if version is not None:
        hosted.versions.serving(version, None)  # NotFound, saying which versions are
        return model_statistics([(name, version)])
    return model_statistics([(name, number) for number in _serving(hosted)])


def _serving(hosted: HostedModel) -> list[int]:
    return sorted(hosted.versions.numbers(VersionState.AVAILABLE))


@blueprint.get("/v2/models/<name>/config")
@blueprint.get("/v2/models/<name>/versions/<int:version>/config")
def model_config(name: str, version: int | None = None):
    return json_response(describe_config(current_server(), name, version))


def describe_config(server: ModelServer, name: str, version: int | None) -> dict:
    """Triton's model configuration, of what this server knows: the batch sizes, batching and the tensors.

    Dims leave out the batch dimension, as Triton's do for a model that batches; -1 is any size.
    """
    hosted = server.hosted(name)
    model = hosted.versions.serving(version)
    settings, batcher = hosted.settings, hosted.batcher

    def tensors(infos) -> list[dict]:
        return [
            {
                "name": info.name,
                "data_type": "TYPE_" + ("STRING" if info.dtype == "string" else datatype_of(info)),
                "dims": [-1 if dim is None else dim for dim in info.instance_shape],
            }
            for info in infos
        ]

    fixed_delay_us = int(settings.batch_timeout_ms * 1000) if settings.batch_policy == "fixed" else 0
    return {
        "name": model.name,
        "platform": model.platform,
        "version_policy": {"specific": {"versions": _serving(hosted)}},
        "max_batch_size": model.max_batch_size,
        "input": tensors(model.signature.inputs),
        "output": tensors(model.signature.outputs),
        "dynamic_batching": {
            "preferred_batch_size": [batcher.preferred_batch_size],
            "max_queue_delay_microseconds": fixed_delay_us,
            "default_queue_policy": {"max_queue_size": settings.max_queue},
        },
        "parameters": {
            "batch_policy": {"string_value": settings.batch_policy},  # adaptive: the delay follows the load
            "padded_batch_sizes": {"string_value": ",".join(map(str, model.batch_sizes))},
        },
    }
