"""Several models in one Gunicorn server (MODEL_CONFIG_FILE): planned together, each routed by its name on
TF Serving's REST and gRPC and on V2, each with its own batcher and metrics."""

from __future__ import annotations

import json
import shutil

import grpc
import numpy as np
import pytest
import requests

from service.tfserving_messages import DataType, PredictRequest, PredictResponse
from tests.support import run_readme_block, scrape, value, write_scaling_onnx

pytestmark = pytest.mark.integration

PREDICT = "/tensorflow.serving.PredictionService/Predict"


@pytest.fixture(scope="module")
def two_models(launch_server, demo_onnx_path, tmp_path_factory):
    """`digits` (the demo model as ONNX) and `scaler` (y = 3x, labelled), one worker of the default class."""
    root = tmp_path_factory.mktemp("models")
    (root / "digits" / "1").mkdir(parents=True)
    shutil.copy(demo_onnx_path, root / "digits" / "1" / "model.onnx")
    write_scaling_onnx(root / "scaler" / "1" / "model.onnx", 3.0)
    (root / "scaler" / "settings.env").write_text("MAX_QUEUE=48\n")
    config = root / "models.config"
    config.write_text(
        """
        model_config_list {
          config { name: "digits" base_path: "digits" model_platform: "onnx" }
          config { name: "scaler" base_path: "scaler" version_labels { key: "stable" value: 1 } }
        }
        """
    )
    server = launch_server(MODEL_CONFIG_FILE=str(config), WORKERS="1", MAX_BATCH_SIZE="16", LOG_FORMAT="json")
    server.wait_for_grpc(1)
    yield server
    server.stop()


def grpc_predict(server, name: str, values: np.ndarray, input_name: str) -> PredictResponse:
    request = PredictRequest()
    request.model_spec.name = name
    tensor = request.inputs[input_name]
    tensor.dtype = DataType.Value("DT_FLOAT")
    for size in values.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.extend(values.ravel().tolist())
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(
            PREDICT,
            request_serializer=PredictRequest.SerializeToString,
            response_deserializer=PredictResponse.FromString,
        )
        return call(request, timeout=60)


def floats(tensor) -> list[float]:
    """A float32 TensorProto's values, listed or packed in `tensor_content`."""
    return list(tensor.float_val) or np.frombuffer(tensor.tensor_content, np.float32).tolist()


def test_each_model_is_served_by_its_name_on_every_protocol(two_models, demo_holdout):
    images, _ = demo_holdout
    url = two_models.url
    digits = requests.post(f"{url}/v1/models/digits:predict", json={"instances": images[:3].tolist()}, timeout=60)
    assert digits.status_code == 200 and np.asarray(digits.json()["predictions"]).shape == (3, 10)
    scaled = requests.post(f"{url}/v1/models/scaler/labels/stable:predict", json={"instances": [[1, 2]]}, timeout=60)
    assert scaled.json() == {"predictions": [[3.0, 6.0]]}
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [2.0, 4.0]}
    v2 = requests.post(f"{url}/v2/models/scaler/infer", json={"inputs": [tensor]}, timeout=60).json()
    assert v2["model_name"] == "scaler" and v2["outputs"][0]["data"] == [6.0, 12.0]
    answer = grpc_predict(two_models, "scaler", np.array([[1.0, 1.0]], np.float32), "x")
    assert floats(answer.outputs["y"]) == [3.0, 3.0] and answer.model_spec.name == "scaler"
    digits_input = next(iter(requests.get(f"{url}/v1/models/digits/metadata", timeout=30).json()["metadata"][
        "signature_def"]["signature_def"]["serving_default"]["inputs"]))  # fmt: skip
    answer = grpc_predict(two_models, "digits", images[:2].astype(np.float32), digits_input)
    assert answer.model_spec.name == "digits" and len(floats(next(iter(answer.outputs.values())))) == 20


def test_a_model_not_served_is_not_found_naming_those_that_are(two_models):
    with pytest.raises(grpc.RpcError) as refused:
        grpc_predict(two_models, "resnet", np.array([[1.0, 1.0]], np.float32), "x")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'digits', 'scaler'" in refused.value.details()
    unnamed = requests.post(f"{two_models.url}/predict", json={"instances": [[1, 2]]}, timeout=30)
    assert unnamed.status_code == 404 and "must name its model" in unnamed.json()["error"]


def test_the_plan_the_lists_and_the_metrics_cover_every_model(two_models):
    url = two_models.url
    requests.post(f"{url}/v1/models/scaler:predict", json={"instances": [[1, 2]]}, timeout=60).raise_for_status()
    assert "models       2:" in two_models.log(), "the plan block sizes the worker for both models"
    listed = requests.get(f"{url}/v1/models", timeout=30).json()["models"]
    assert [model["name"] for model in listed] == ["digits", "scaler"]
    stats = requests.get(f"{url}/stats", timeout=30).json()["models"]
    assert (stats["scaler"]["max_batch_size"], set(stats)) == (16, {"digits", "scaler"})
    samples = scrape(url)
    assert value(samples, "model_server_model_info", name="digits", version="1") == 1
    assert value(samples, "model_server_model_info", name="scaler", version="1") == 1
    assert value(samples, "model_server_batch_size_instances_count", model="scaler") >= 1
    assert ("model_server_queue_depth_instances", frozenset({("model", "digits")})) in samples


def test_the_readme_lists_the_models_and_the_repository_index(two_models):
    names, index = run_readme_block(" (models)", two_models)
    assert names == "['digits', 'scaler']"
    assert [(entry["name"], entry["state"]) for entry in json.loads(index)] == [
        ("digits", "READY"),
        ("scaler", "READY"),
    ]
