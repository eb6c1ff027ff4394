"""The gRPC APIs on the live server, gthread and gevent: TF Serving's called with tensorflow-serving-api's stubs, the
Open Inference Protocol's with tritonclient.grpc, and the health service."""

from __future__ import annotations

import json
import socket
import threading

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from scripts.launcher import ServerFailedToStart
from service.protocols.tfserving_grpc import PREDICT

pytestmark = pytest.mark.integration


def channel_to(server) -> grpc.Channel:
    """A channel with its own connection: channels of one process share connections unless told otherwise."""
    return grpc.insecure_channel(server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])


def predict_request(images: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images.astype(np.float32)))
    return request


def test_predict_gives_the_predictions_of_the_rest_route(demo_server, demo_holdout):
    images = demo_holdout[0][:20]
    answer = requests.post(
        f"{demo_server.url}/v1/models/digits:predict", json={"instances": images.tolist()}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    with channel_to(demo_server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_request(images), timeout=60)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, np.array(answer.json()["predictions"]), atol=1e-6)
    assert (probabilities.argmax(1) == demo_holdout[1][:20]).mean() >= 0.8


def test_metadata_and_status_answer_as_tf_serving_does(demo_server):
    with channel_to(demo_server) as channel:
        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata_request.model_spec.name = "digits"
        metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
            metadata_request, timeout=60
        )
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "digits"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    image = signatures.signature_def["serving_default"].inputs["image"]
    assert [dim.size for dim in image.tensor_shape.dim] == [-1, 8, 8, 1]
    (version,) = status.model_version_status
    assert version.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_tritonclient_grpc_infers_as_the_rest_route_one_call_and_a_stream(demo_server, demo_holdout):
    images = demo_holdout[0][:8].astype(np.float32)
    answer = requests.post(
        f"{demo_server.url}/v2/models/digits/infer",
        json={"inputs": [{"name": "image", "datatype": "FP32", "shape": list(images.shape), "data": images.tolist()}]},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    expected = np.array(answer.json()["outputs"][0]["data"]).reshape(8, -1)
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    answers: list = []
    with triton.InferenceServerClient(demo_server.grpc_target) as client:
        assert client.is_model_ready("digits")
        np.testing.assert_allclose(client.infer("digits", [tensor]).as_numpy("probabilities"), expected, atol=1e-6)
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        for request_id in ("a", "b"):
            client.async_stream_infer("digits", [tensor], request_id=request_id)
        client.stop_stream()  # after every answer of the stream
    assert [(result.get_response().id, error) for result, error in answers] == [("a", None), ("b", None)]
    np.testing.assert_allclose(answers[1][0].as_numpy("probabilities"), expected, atol=1e-6)
    with channel_to(demo_server) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=60)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_concurrent_calls_are_batched_and_connections_spread_over_the_workers(onnx_server, demo_holdout):
    """16 channels of 6 calls each: every call answered, several calls per pass, and both workers serve."""
    images = demo_holdout[0][:1]
    outcomes: list[tuple[str, int]] = []
    channels = [channel_to(onnx_server) for _ in range(16)]

    def calls(channel: grpc.Channel, number: int) -> None:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for call in range(6):
            request_id = f"spread-{number}-{call}"
            _, answer = stub.Predict.with_call(
                predict_request(images), timeout=60, metadata=[("x-request-id", request_id)]
            )
            outcomes.append((request_id, int(dict(answer.trailing_metadata())["x-batch-size"])))

    threads = [threading.Thread(target=calls, args=(channel, number)) for number, channel in enumerate(channels)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for channel in channels:
        channel.close()
    assert len(outcomes) == 96
    assert max(size for _, size in outcomes) > 1, "concurrent calls share forward passes"
    served_by = set()
    for line in onnx_server.log().splitlines():
        if '"spread-' in line and PREDICT in line:
            event = json.loads(line)
            served_by.add(event["pid"])
    assert len(served_by) == 2, "16 connections landed on both workers"


def test_a_grpc_port_another_process_listens_on_stops_the_start_with_its_reason(start_server, demo_model_path):
    """Without the check, SO_REUSEPORT would let this service share the port with the other silently."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as another instance's workers bind it
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ServerFailedToStart, match=f"GRPC_PORT={port} on 127.0.0.1 cannot be bound"):
            start_server(MODEL_PATH=str(demo_model_path), WORKERS="1", GRPC_PORT=str(port))
