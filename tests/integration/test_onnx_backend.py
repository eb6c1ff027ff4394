"""The demo model served through ONNX Runtime: the same three protocols, TensorFlow's answers, no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

pytestmark = pytest.mark.integration

TOLERANCE = 1e-5  # absolute, as scripts/convert_to_onnx.py checks it


@pytest.fixture(scope="module")
def keras_answers(demo_model_path, demo_holdout):
    import keras

    model = keras.models.load_model(demo_model_path, compile=False)
    return model(demo_holdout[0][:32], training=False).numpy()


def test_rest_v2_and_grpc_answer_as_tensorflow_does(onnx_server, demo_holdout, keras_answers):
    images = demo_holdout[0][:32]
    rest = requests.post(f"{onnx_server.url}/v1/models/digits:predict", json={"instances": images.tolist()}, timeout=60)
    assert rest.status_code == 200, rest.text
    np.testing.assert_allclose(np.array(rest.json()["predictions"]), keras_answers, atol=TOLERANCE)

    v2_body = {
        "inputs": [{"name": "image", "shape": list(images.shape), "datatype": "FP32", "data": images.ravel().tolist()}]
    }
    v2 = requests.post(f"{onnx_server.url}/v2/models/digits/infer", json=v2_body, timeout=60)
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [32, 10]
    np.testing.assert_allclose(np.reshape(output["data"], (32, 10)), keras_answers, atol=TOLERANCE)

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    with grpc.insecure_channel(onnx_server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), keras_answers, atol=TOLERANCE)


def test_metadata_describes_the_onnx_graph(onnx_server):
    v2 = requests.get(f"{onnx_server.url}/v2/models/digits", timeout=30).json()
    assert v2["platform"] == "onnxruntime_onnx"
    assert v2["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
    assert v2["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    signature = requests.get(f"{onnx_server.url}/v1/models/digits/metadata", timeout=30).json()
    inputs = signature["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["image"]["dtype"] == "DT_FLOAT"


def test_a_client_mistake_is_a_400_with_what_was_wrong(onnx_server):
    answer = requests.post(f"{onnx_server.url}/v1/models/digits:predict", json={"instances": [[1.0, 2.0]]}, timeout=30)
    assert answer.status_code == 400
    assert "image" in answer.json()["error"]


def test_workers_serving_onnx_never_load_tensorflow(onnx_server):
    master = psutil.Process(onnx_server.process.pid)
    workers = master.children()
    assert len(workers) == 2
    for worker in workers:
        maps = Path(f"/proc/{worker.pid}/maps").read_text()
        assert "onnxruntime" in maps and "cygrpc" in maps  # it serves the model and gRPC
        assert "tensorflow" not in maps
    assert "onnx devices ['CPUExecutionProvider']" in onnx_server.log()
