"""TensorFlow Serving's gRPC API: PredictionService's Predict and GetModelMetadata, ModelService's GetModelStatus
and HandleReloadConfigRequest.

What TF Serving's gRPC clients speak (`tensorflow-serving-api`'s stubs, unchanged). The transport
(service/web/grpc_server.py) hands each call here as a WSGI request whose path is the call's
method and whose body is its serialized message, so a call goes through the same layers as an
HTTP request: request ids, API keys, metrics and the access log, and for Predict the same
`InferenceEndpoint` as the REST protocols' (admission before decoding, deadlines, the result
cache, the batcher), so it joins their batches. Messages are parsed here, not by gRPC, so a
malformed one is answered as a client mistake (INVALID_ARGUMENT) like a malformed JSON body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import json_format, text_format
from google.protobuf.message import Message

from service import tfserving_messages as messages
from service.backends.base import Arrays, ServedModel
from service.backends.signature import ModelSignature
from service.errors import BadRequest, Conflict, WsgiApp
from service.pipeline.inference import InferenceEndpoint, InferenceTarget
from service.pipeline.model_server import ModelServer
from service.protocols.grpc_calls import MethodCalls, parse
from service.protocols.tensor_proto import from_array, to_array
from service.protocols.tfserving_codec import check_count
from service.protocols.tfserving_rest import describe_status

PROTOCOL = "tfserving_grpc"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
PREDICT = f"/{PREDICTION_SERVICE}/Predict"
GET_MODEL_METADATA = f"/{PREDICTION_SERVICE}/GetModelMetadata"
GET_MODEL_STATUS = f"/{MODEL_SERVICE}/GetModelStatus"
RELOAD_CONFIG = f"/{MODEL_SERVICE}/HandleReloadConfigRequest"
# Classify, Regress, MultiInference: UNIMPLEMENTED
METHODS = (PREDICT, GET_MODEL_METADATA, GET_MODEL_STATUS, RELOAD_CONFIG)
SERVING_DEFAULT = "serving_default"
PARSED_REQUEST_KEY = "service.grpc_predict_request"  # the PredictRequest, parsed by refine_target


def match_inference(path: str) -> InferenceTarget | None:
    """Predict; the model is named in the message, not the path, and checked when it is decoded."""
    return InferenceTarget(PROTOCOL, PREDICT, None, None) if path == PREDICT else None


@dataclass(frozen=True)
class DecodedPredict:
    inputs: Arrays
    count: int
    outputs: tuple[str, ...]  # `output_filter`, else every output of the model


class PredictCall(InferenceEndpoint):
    """`PredictionService.Predict`: TensorProto inputs in, the model's (or the filtered) outputs out."""

    protocol = PROTOCOL
    match_inference = staticmethod(match_inference)

    def refine_target(self, target: InferenceTarget, environ: dict) -> InferenceTarget:
        """The version the message's spec names. The message is parsed here, before admission (gRPC hands it
        over whole, and parsing costs microseconds); `decode` then takes it from the environ.
        """
        request = parse(messages.PredictRequest, self.body(environ))
        environ[PARSED_REQUEST_KEY] = request
        return InferenceTarget(target.protocol, target.route, *spec_target(request.model_spec))

    def decode(self, body: bytes, environ: dict, model: ServedModel) -> DecodedPredict:
        request = environ[PARSED_REQUEST_KEY]
        settings = self._server.settings_for(model)
        return decode_predict(request, model.signature, settings.max_request_instances, settings.max_body_bytes)

    def encode(self, decoded: DecodedPredict, result: Arrays, model: ServedModel) -> tuple[bytes, dict[str, str]]:
        return encode_predict(decoded, result, model), {}


def decode_predict(
    request: messages.PredictRequest, signature: ModelSignature, max_instances: int, max_bytes: int
) -> DecodedPredict:
    """A PredictRequest's inputs as arrays checked against the model's signature; BadRequest saying what is wrong.

    Each input's declared shape is checked against `max_instances` and `max_bytes` before it is read.
    """
    if set(request.inputs) != set(signature.input_names):
        raise BadRequest(
            f"inputs must be exactly the model's {sorted(signature.input_names)}, got {sorted(request.inputs)}"
        )
    inputs = {
        info.name: to_array(request.inputs[info.name], info, max_instances, max_bytes) for info in signature.inputs
    }
    counts = {len(array) for array in inputs.values()}
    if len(counts) > 1:
        raise BadRequest(f"all inputs must have the same batch dimension, got {sorted(counts)}")
    count = check_count(counts.pop(), max_instances, "the batch dimension")
    outputs = tuple(request.output_filter) or tuple(info.name for info in signature.outputs)
    known = {info.name for info in signature.outputs}
    if not set(outputs) <= known or len(set(outputs)) != len(outputs):
        raise BadRequest(
            f"output_filter must name distinct outputs of the model's {sorted(known)}, got {list(outputs)}"
        )
    return DecodedPredict(inputs, count, outputs)


def encode_predict(decoded: DecodedPredict, result: Arrays, model: ServedModel) -> bytes:
    """The serialized PredictResponse: the requested outputs, and the spec of the model that answered."""
    response = messages.PredictResponse()
    _describe_spec(model, response.model_spec)
    for name in decoded.outputs:
        from_array(result[name], response.outputs[name])
    return response.SerializeToString()


class ModelCalls(MethodCalls):
    """`GetModelMetadata`, `GetModelStatus` and `HandleReloadConfigRequest`."""

    protocol = PROTOCOL

    def answers(self) -> dict[str, Callable[[bytes], Message]]:
        return {GET_MODEL_METADATA: self._metadata, GET_MODEL_STATUS: self._status, RELOAD_CONFIG: self._reload_config}

    def _metadata(self, body: bytes) -> messages.GetModelMetadataResponse:
        request = parse(messages.GetModelMetadataRequest, body)
        model = model_for_spec(self._server, request.model_spec)
        if list(request.metadata_field) != ["signature_def"]:
            raise BadRequest(
                f"metadata_field must be ['signature_def'], the one this server has; got {list(request.metadata_field)}"
            )
        response = messages.GetModelMetadataResponse()
        _describe_spec(model, response.model_spec)
        signatures = model.metadata()["metadata"]["signature_def"]  # the REST metadata's JSON is the proto's
        response.metadata["signature_def"].Pack(json_format.ParseDict(signatures, messages.SignatureDefMap()))
        return response

    def _status(self, body: bytes) -> messages.GetModelStatusResponse:
        """Every version's status, as TF Serving's, or the one the spec names."""
        spec = parse(messages.GetModelStatusRequest, body).model_spec
        status = describe_status(self._server, *spec_target(spec))
        return json_format.ParseDict(status, messages.GetModelStatusResponse())

    def _reload_config(self, body: bytes) -> messages.ReloadConfigResponse:
        """Serve the models the config lists, and only those, once they load (TF Serving answers when they have).

        A config that cannot be served is INVALID_ARGUMENT; models that do not load,
        FAILED_PRECONDITION naming them, the others serving as the config says.
        """
        config = parse(messages.ReloadConfigRequest, body).config
        if self._server.repository is None:
            raise Conflict("this server serves one model (MODEL_PATH or MODEL_BASE_PATH); serve MODEL_CONFIG_FILE's")
        self._server.repository.reload_config(text_format.MessageToString(config))
        return messages.ReloadConfigResponse()  # its status: OK, error_code 0


def calls(server: ModelServer, fallback: WsgiApp) -> WsgiApp:
    """The API's methods as one WSGI app; other paths go to `fallback`."""
    return PredictCall(server, ModelCalls(server, fallback))


def spec_target(spec: messages.ModelSpec) -> tuple[str | None, int | None, str | None]:
    """The model name (None: the one served), version and label a ModelSpec names; BadRequest for another signature."""
    if spec.signature_name not in ("", SERVING_DEFAULT):
        raise BadRequest(f"unknown signature_name {spec.signature_name!r}; this model serves {SERVING_DEFAULT!r}")
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label if spec.HasField("version_label") else None
    return spec.name or None, version, label


def model_for_spec(server: ModelServer, spec: messages.ModelSpec) -> ServedModel:
    """The model version a ModelSpec names; NotFound or BadRequest otherwise."""
    return server.model_for(*spec_target(spec))


def _describe_spec(model: ServedModel, spec: messages.ModelSpec) -> None:
    spec.name, spec.signature_name = model.name, SERVING_DEFAULT
    spec.version.value = model.version
