"""The Open Inference Protocol over gRPC: Triton's and KServe's `inference.GRPCInferenceService`.

What `tritonclient.grpc`, KServe's gRPC predictor and MLServer's clients speak. As TF Serving's
gRPC API (tfserving_grpc.py), each call reaches the worker as a WSGI request whose path is the
method and whose body is the serialized message, through the same layers as HTTP: ModelInfer
is an `InferenceEndpoint`, so its calls join the batches of every other protocol, and the other
methods answer from the same functions as V2 REST's routes. ModelStreamInfer answers each
request of the stream, in order, each as one ModelInfer call (an error is that response's
`error_message`; the stream goes on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from service import v2_messages as messages
from service.backends.base import Arrays, ServedModel
from service.errors import BadRequest, NotFound, WsgiApp
from service.pipeline.inference import InferenceEndpoint, InferenceTarget
from service.pipeline.model_server import ModelServer
from service.protocols.grpc_calls import MethodCalls, parse
from service.protocols.v2_codec import InferRequest
from service.protocols.v2_grpc_codec import decode_model_infer, encode_model_infer
from service.protocols.v2_rest import (
    check_repository_parameters,
    describe_config,
    describe_model,
    describe_server,
    index_entries,
    model_is_ready,
    repository_of,
    statistics_of,
)

PROTOCOL = "v2_grpc"
SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"
MODEL_STREAM_INFER = f"/{SERVICE}/ModelStreamInfer"
SERVER_LIVE = f"/{SERVICE}/ServerLive"
SERVER_READY = f"/{SERVICE}/ServerReady"
MODEL_READY = f"/{SERVICE}/ModelReady"
SERVER_METADATA = f"/{SERVICE}/ServerMetadata"
MODEL_METADATA = f"/{SERVICE}/ModelMetadata"
MODEL_CONFIG = f"/{SERVICE}/ModelConfig"
MODEL_STATISTICS = f"/{SERVICE}/ModelStatistics"
REPOSITORY_INDEX = f"/{SERVICE}/RepositoryIndex"
REPOSITORY_MODEL_LOAD = f"/{SERVICE}/RepositoryModelLoad"
REPOSITORY_MODEL_UNLOAD = f"/{SERVICE}/RepositoryModelUnload"
# Shared memory, tracing and log settings: UNIMPLEMENTED.
METHODS = (
    MODEL_INFER,
    SERVER_LIVE,
    SERVER_READY,
    MODEL_READY,
    SERVER_METADATA,
    MODEL_METADATA,
    MODEL_CONFIG,
    MODEL_STATISTICS,
    REPOSITORY_INDEX,
    REPOSITORY_MODEL_LOAD,
    REPOSITORY_MODEL_UNLOAD,
)
PARSED_REQUEST_KEY = "service.grpc_infer_request"  # the ModelInferRequest, parsed by refine_target


def match_inference(path: str) -> InferenceTarget | None:
    """ModelInfer; the model is named in the message, not the path."""
    return InferenceTarget(PROTOCOL, MODEL_INFER, None, None) if path == MODEL_INFER else None


class InferCall(InferenceEndpoint):
    """`ModelInfer`: typed or raw inputs in, the requested outputs out as raw bytes."""

    protocol = PROTOCOL
    match_inference = staticmethod(match_inference)

    def refine_target(self, target: InferenceTarget, environ: dict) -> InferenceTarget:
        """The model and version the message names; parsed before admission, `decode` takes it from the environ."""
        request = parse(messages.ModelInferRequest, self.body(environ))
        if not request.model_name:
            raise BadRequest("model_name is required")
        environ[PARSED_REQUEST_KEY] = request
        return InferenceTarget(target.protocol, target.route, request.model_name, version_of(request.model_version))

    def decode(self, body: bytes, environ: dict, model: ServedModel) -> InferRequest:
        max_instances = self._server.settings_for(model).max_request_instances
        return decode_model_infer(environ[PARSED_REQUEST_KEY], model.signature, max_instances)

    def encode(self, decoded: InferRequest, result: Arrays, model: ServedModel) -> tuple[bytes, dict[str, str]]:
        return encode_model_infer(model.name, model.version, decoded, result), {}


class ServiceCalls(MethodCalls):
    """The service's methods other than inference."""

    protocol = PROTOCOL

    def answers(self) -> dict[str, Callable[[bytes], Message]]:
        return {
            SERVER_LIVE: lambda body: messages.ServerLiveResponse(live=True),
            SERVER_READY: lambda body: messages.ServerReadyResponse(ready=self._server.ready),
            MODEL_READY: self._model_ready,
            SERVER_METADATA: lambda body: json_format.ParseDict(describe_server(), messages.ServerMetadataResponse()),
            MODEL_METADATA: self._model_metadata,
            MODEL_CONFIG: self._model_config,
            MODEL_STATISTICS: self._model_statistics,
            REPOSITORY_INDEX: self._repository_index,
            REPOSITORY_MODEL_LOAD: self._load,
            REPOSITORY_MODEL_UNLOAD: self._unload,
        }

    def _model_ready(self, body: bytes) -> messages.ModelReadyResponse:
        """Ready as V2 REST's route says; a model not served is not ready (Triton answers so, not NOT_FOUND)."""
        request = parse(messages.ModelReadyRequest, body)
        try:
            ready = model_is_ready(self._server, request.name, version_of(request.version))
        except NotFound:
            ready = False
        return messages.ModelReadyResponse(ready=ready)

    def _model_metadata(self, body: bytes) -> messages.ModelMetadataResponse:
        request = parse(messages.ModelMetadataRequest, body)
        document = describe_model(self._server, request.name, version_of(request.version))
        return json_format.ParseDict(document, messages.ModelMetadataResponse())

    def _model_config(self, body: bytes) -> messages.ModelConfigResponse:
        request = parse(messages.ModelConfigRequest, body)
        config = describe_config(self._server, request.name, version_of(request.version))
        return json_format.ParseDict({"config": config}, messages.ModelConfigResponse())

    def _model_statistics(self, body: bytes) -> messages.ModelStatisticsResponse:
        """Every model's when the request names none, as Triton's."""
        request = parse(messages.ModelStatisticsRequest, body)
        stats = statistics_of(self._server, request.name, version_of(request.version))
        return json_format.ParseDict({"model_stats": stats}, messages.ModelStatisticsResponse())

    def _repository_index(self, body: bytes) -> messages.RepositoryIndexResponse:
        request = parse(messages.RepositoryIndexRequest, body)
        entries = [entry for entry in index_entries(self._server) if not request.ready or entry["state"] == "READY"]
        return json_format.ParseDict({"models": entries}, messages.RepositoryIndexResponse())

    def _load(self, body: bytes) -> messages.RepositoryModelLoadResponse:
        request = parse(messages.RepositoryModelLoadRequest, body)
        check_repository_parameters(request.parameters, ())
        repository_of(self._server).load(request.model_name)
        return messages.RepositoryModelLoadResponse()

    def _unload(self, body: bytes) -> messages.RepositoryModelUnloadResponse:
        request = parse(messages.RepositoryModelUnloadRequest, body)
        check_repository_parameters(request.parameters, ("unload_dependents",))  # a model here has no dependents
        repository_of(self._server).unload(request.model_name)
        return messages.RepositoryModelUnloadResponse()


def calls(server: ModelServer, fallback: WsgiApp) -> WsgiApp:
    """The service's unary methods as one WSGI app; other paths go to `fallback`."""
    return InferCall(server, ServiceCalls(server, fallback))


# What a stream's request gets from the worker: (HTTP status, body), as a unary ModelInfer call would.
AnswerCall = Callable[[str, bytes], tuple[int, bytes]]


def stream_infer(requests: Iterable[bytes], answer: AnswerCall) -> Iterator[bytes]:
    """ModelStreamInfer: each request answered as a ModelInfer call, in order; a failure is its response's message."""
    for body in requests:
        status, payload = answer(MODEL_INFER, body)
        if status == 200:
            response = messages.ModelStreamInferResponse(infer_response=messages.ModelInferResponse.FromString(payload))
        else:
            response = messages.ModelStreamInferResponse(error_message=orjson.loads(payload)["error"])
        yield response.SerializeToString()


def version_of(text: str) -> int | None:
    """A message's `model_version`: empty for the latest, else a version number; BadRequest otherwise."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise BadRequest(f"model_version {text[:40]!r} is not a version number (or empty for the latest)")
    return int(text)
