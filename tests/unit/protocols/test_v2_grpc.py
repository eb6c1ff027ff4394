"""The Open Inference Protocol over gRPC, served in-process, called with tritonclient.grpc unchanged (and with bare
messages where the client cannot say something wrong)."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from tritonclient.utils import InferenceServerException

from service import v2_messages as messages
from service.protocols.v2_grpc import MODEL_INFER
from tests.support import rows


@pytest.fixture
def client(served, grpc_settings):
    with triton.InferenceServerClient(f"127.0.0.1:{grpc_settings.grpc_port}") as client:
        yield client


def infer_input(values, datatype: str = "FP32") -> triton.InferInput:
    array = np.asarray(values, np.float32 if datatype == "FP32" else None)
    tensor = triton.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def model_infer(channel, request: messages.ModelInferRequest) -> messages.ModelInferResponse:
    call = channel.unary_unary(
        MODEL_INFER, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )
    return messages.ModelInferResponse.FromString(call(request, timeout=10))


def test_health_metadata_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fake") and client.is_model_ready("fake", "1")
    assert not client.is_model_ready("other")
    assert client.get_server_metadata().name == "tf-model-server"
    metadata = client.get_model_metadata("fake")
    assert (metadata.name, list(metadata.versions)) == ("fake", ["1"])
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1, 3])]
    with pytest.raises(InferenceServerException, match="'other' is not served here"):
        client.get_model_metadata("other")


def test_infer_with_raw_contents_answers_the_model_and_the_request_id(client):
    result = client.infer("fake", [infer_input(rows(2))], request_id="checkout-7")
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * np.array(rows(2), np.float32))
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("fake", "1", "checkout-7")


def test_infer_with_typed_contents_and_a_version_and_output_selection(served):
    _, channel = served
    request = messages.ModelInferRequest(model_name="fake", model_version="1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    tensor.contents.fp32_contents.extend(np.ravel(rows(2)).tolist())
    request.outputs.add(name="y")
    response = model_infer(channel, request)
    assert [(t.name, t.datatype, list(t.shape)) for t in response.outputs] == [("y", "FP32", [2, 3])]
    answer = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 3)
    np.testing.assert_array_equal(answer, 2 * np.array(rows(2), np.float32))


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        (lambda r: setattr(r, "model_name", "other"), grpc.StatusCode.NOT_FOUND, "'other' is not served here"),
        (lambda r: setattr(r, "model_version", "2"), grpc.StatusCode.NOT_FOUND, "no version 2"),
        (lambda r: setattr(r, "model_version", "v1"), grpc.StatusCode.INVALID_ARGUMENT, "not a version number"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP64"), grpc.StatusCode.INVALID_ARGUMENT, "takes FP32"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 4), grpc.StatusCode.INVALID_ARGUMENT, "takes ['batch', 3]"),
        (lambda r: r.inputs[0].contents.fp32_contents.append(1), grpc.StatusCode.INVALID_ARGUMENT, "has 4 values"),
        (lambda r: r.inputs[0].contents.fp32_contents.__setitem__(0, np.nan), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        (lambda r: r.raw_input_contents.append(b"\0" * 12), grpc.StatusCode.INVALID_ARGUMENT, "both typed contents"),
        (lambda r: r.raw_input_contents.extend([b"", b""]), grpc.StatusCode.INVALID_ARGUMENT, "2 entries for 1"),
        (lambda r: r.outputs.add(name="z"), grpc.StatusCode.INVALID_ARGUMENT, "outputs must name"),
        (lambda r: setattr(r.inputs[0], "name", "w"), grpc.StatusCode.INVALID_ARGUMENT, "exactly the model's"),
    ],
)
def test_client_mistakes_get_the_status_rest_maps_them_to_and_say_what_was_wrong(served, change, code, says):
    _, channel = served
    request = messages.ModelInferRequest(model_name="fake")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    change(request)
    with pytest.raises(grpc.RpcError) as raised:
        model_infer(channel, request)
    assert raised.value.code() == code and says in raised.value.details()


def test_a_message_that_is_not_an_infer_request_is_invalid_argument(served):
    _, channel = served
    call = channel.unary_unary(MODEL_INFER)
    with pytest.raises(grpc.RpcError) as raised:
        call(b"\xff\xff\xff", timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ModelInferRequest" in raised.value.details()


def test_async_infer_and_stream_answer_each_request(client):
    answers: queue.Queue = queue.Queue()
    client.async_infer("fake", [infer_input(rows(1))], lambda result, error: answers.put((result, error)))
    result, error = answers.get(timeout=10)
    assert error is None and result.as_numpy("y").tolist() == [[0.0, 1.0, -0.0]]

    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("fake", [infer_input(rows(1, start=1))], request_id="a")
    client.async_stream_infer("fake", [infer_input([[1.0, 2.0]])], request_id="b")  # a mistake: 2 values, not 3
    client.async_stream_infer("fake", [infer_input(rows(1, start=2))], request_id="c")
    got = [answers.get(timeout=10) for _ in range(3)]
    client.stop_stream()
    assert got[0][1] is None and got[0][0].get_response().id == "a"
    assert got[0][0].as_numpy("y").tolist() == [[2.0, 3.0, -2.0]]
    assert got[1][0] is None and "takes ['batch', 3]" in str(got[1][1])
    assert got[2][1] is None and got[2][0].as_numpy("y").tolist() == [[4.0, 5.0, -4.0]]


def test_calls_are_counted_under_their_protocol_and_method(client):
    labels = {"protocol": "v2_grpc", "route": MODEL_INFER, "method": "POST", "status": "200"}
    before = REGISTRY.get_sample_value("model_server_http_requests_total", labels) or 0.0
    client.infer("fake", [infer_input(rows(1))])
    assert REGISTRY.get_sample_value("model_server_http_requests_total", labels) == before + 1


def test_statistics_and_configuration_answer_as_rest_does(client, served):
    app, _ = served
    before = client.get_inference_statistics("fake").model_stats[0].inference_stats.success.count
    client.infer("fake", [infer_input(rows(1))])
    (stats,) = client.get_inference_statistics("fake", "1").model_stats
    assert (stats.name, stats.version, stats.inference_stats.success.count) == ("fake", "1", before + 1)
    rest = app.test_client().get("/v2/models/fake/stats").get_json()["model_stats"][0]
    assert stats.execution_count == rest["execution_count"] and stats.last_inference == rest["last_inference"]
    assert [s.name for s in client.get_inference_statistics().model_stats] == ["fake"]
    config = client.get_model_config("fake").config
    assert (config.name, config.max_batch_size, list(config.input[0].dims)) == ("fake", 8, [3])
    with pytest.raises(InferenceServerException, match="'other' is not served here"):
        client.get_inference_statistics("other")


def test_repository_calls_need_a_repository(client):
    assert [(m.name, m.version, m.state) for m in client.get_model_repository_index().models] == [
        ("fake", "1", "READY")
    ]
    with pytest.raises(InferenceServerException, match="serves one model"):
        client.load_model("fake")


def test_health_is_serving_while_ready_and_not_serving_once_the_worker_drains(served):
    app, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService", "tensorflow.serving.PredictionService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="unknown"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    server = app.extensions["model_server"]
    server.ready = False  # as while it loads
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.ready = True
    server.grpc.stop(5)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
