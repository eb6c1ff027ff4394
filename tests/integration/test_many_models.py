"""Several models in one Gunicorn server (MODEL_CONFIG_FILE): planned together, each routed by its name on
TF Serving's REST and gRPC and on V2, each with its own batcher and metrics."""

from __future__ import annotations

import json
import os
import shutil
import threading

import grpc
import numpy as np
import pytest
import requests

from service.tfserving_messages import DataType, PredictRequest, PredictResponse
from tests.support import run_readme_block, scrape, value, wait_until, write_scaling_onnx

pytestmark = pytest.mark.integration

PREDICT = "/tensorflow.serving.PredictionService/Predict"


@pytest.fixture(scope="module")
def three_models(launch_server, demo_onnx_path, tmp_path_factory):
    """`digits` (the demo model as ONNX), `scaler` (y = 3x, labelled) and `tripler` (y = 3x), two workers of the
    default class, the config polled every 0.5 s."""
    root = tmp_path_factory.mktemp("models")
    (root / "digits" / "1").mkdir(parents=True)
    shutil.copy(demo_onnx_path, root / "digits" / "1" / "model.onnx")
    write_scaling_onnx(root / "scaler" / "1" / "model.onnx", 3.0)
    (root / "scaler" / "settings.env").write_text("MAX_QUEUE=48\n")
    write_scaling_onnx(root / "tripler" / "1" / "model.onnx", 3.0)
    write_scaling_onnx(root / "quadrupler" / "1" / "model.onnx", 4.0)  # configured by a test, then removed again
    config = root / "models.config"
    config.write_text(THREE_MODELS)
    server = launch_server(
        MODEL_CONFIG_FILE=str(config), WORKERS="2", MAX_BATCH_SIZE="16", LOG_FORMAT="json", MODEL_CONFIG_POLL_S="0.5"
    )
    server.wait_for_grpc(2)
    server.config = config
    yield server
    server.stop()


DIGITS = 'config { name: "digits" base_path: "digits" model_platform: "onnx" }'
SCALER = 'config { name: "scaler" base_path: "scaler" version_labels { key: "stable" value: 1 } }'
TRIPLER = 'config { name: "tripler" base_path: "tripler" }'
QUADRUPLER = 'config { name: "quadrupler" base_path: "quadrupler" }'
THREE_MODELS = f"model_config_list {{ {DIGITS} {SCALER} {TRIPLER} }}"


def write_config(path, text: str) -> None:
    """As an operator's tool should: the poll reads the old file or the new one, never half of it."""
    written = path.with_suffix(".new")
    written.write_text(text)
    os.replace(written, path)


def steadily(url: str, name: str, status: int, times: int = 12) -> bool:
    """Whether `times` requests in a row, each on a new connection (so to either worker), get `status`."""
    return all(
        requests.post(f"{url}/v1/models/{name}:predict", json={"instances": [[1, 2]]}, timeout=30).status_code == status
        for _ in range(times)
    )


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


def test_each_model_is_served_by_its_name_on_every_protocol(three_models, demo_holdout):
    images, _ = demo_holdout
    url = three_models.url
    digits = requests.post(f"{url}/v1/models/digits:predict", json={"instances": images[:3].tolist()}, timeout=60)
    assert digits.status_code == 200 and np.asarray(digits.json()["predictions"]).shape == (3, 10)
    scaled = requests.post(f"{url}/v1/models/scaler/labels/stable:predict", json={"instances": [[1, 2]]}, timeout=60)
    assert scaled.json() == {"predictions": [[3.0, 6.0]]}
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [2.0, 4.0]}
    v2 = requests.post(f"{url}/v2/models/scaler/infer", json={"inputs": [tensor]}, timeout=60).json()
    assert v2["model_name"] == "scaler" and v2["outputs"][0]["data"] == [6.0, 12.0]
    answer = grpc_predict(three_models, "scaler", np.array([[1.0, 1.0]], np.float32), "x")
    assert floats(answer.outputs["y"]) == [3.0, 3.0] and answer.model_spec.name == "scaler"
    digits_input = next(iter(requests.get(f"{url}/v1/models/digits/metadata", timeout=30).json()["metadata"][
        "signature_def"]["signature_def"]["serving_default"]["inputs"]))  # fmt: skip
    answer = grpc_predict(three_models, "digits", images[:2].astype(np.float32), digits_input)
    assert answer.model_spec.name == "digits" and len(floats(next(iter(answer.outputs.values())))) == 20


def test_a_model_not_served_is_not_found_naming_those_that_are(three_models):
    with pytest.raises(grpc.RpcError) as refused:
        grpc_predict(three_models, "resnet", np.array([[1.0, 1.0]], np.float32), "x")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'digits', 'scaler', 'tripler'" in refused.value.details()
    unnamed = requests.post(f"{three_models.url}/predict", json={"instances": [[1, 2]]}, timeout=30)
    assert unnamed.status_code == 404 and "must name its model" in unnamed.json()["error"]


def test_the_plan_the_lists_and_the_metrics_cover_every_model(three_models):
    url = three_models.url
    requests.post(f"{url}/v1/models/scaler:predict", json={"instances": [[1, 2]]}, timeout=60).raise_for_status()
    assert "models       3:" in three_models.log(), "the plan block sizes the workers for all three models"
    listed = requests.get(f"{url}/v1/models", timeout=30).json()["models"]
    assert [model["name"] for model in listed] == ["digits", "scaler", "tripler"]
    stats = requests.get(f"{url}/stats", timeout=30).json()["models"]
    assert (stats["scaler"]["max_batch_size"], set(stats)) == (16, {"digits", "scaler", "tripler"})
    samples = scrape(url)
    assert value(samples, "model_server_model_info", name="digits", version="1") == 1
    assert value(samples, "model_server_model_info", name="scaler", version="1") == 1
    assert value(samples, "model_server_batch_size_instances_count", model="scaler") >= 1
    assert ("model_server_queue_depth_instances", frozenset({("model", "digits")})) in samples


def test_the_readme_lists_the_models_and_unloads_and_loads_one(three_models):
    names, index, unloaded, loaded = run_readme_block(" (models)", three_models, {"heavy": "scaler"})
    assert names == "['digits', 'scaler', 'tripler']" and unloaded == loaded == "{}"
    assert [(entry["name"], entry["state"]) for entry in json.loads(index)] == [
        ("digits", "READY"),
        ("scaler", "READY"),
        ("tripler", "READY"),
    ]
    wait_until(lambda: steadily(three_models.url, "scaler", 200), 30, "both workers serving scaler again")


def test_models_added_and_removed_while_serving_fail_no_request_of_the_others(three_models, demo_holdout):
    """The config file polled (MODEL_CONFIG_POLL_S) and the repository API, in both workers, under load."""
    url, images = three_models.url, demo_holdout[0][:2].tolist()
    statuses, stop = [], threading.Event()

    def keep_predicting():
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.post(f"{url}/v1/models/digits:predict", json={"instances": images}, timeout=30)
                statuses.append(answer.status_code)

    client = threading.Thread(target=keep_predicting)
    client.start()
    try:
        write_config(three_models.config, f"model_config_list {{ {DIGITS} {SCALER} {TRIPLER} {QUADRUPLER} }}")
        wait_until(lambda: steadily(url, "quadrupler", 200), 60, "the model added serving in both workers")
        write_config(three_models.config, f"model_config_list {{ {DIGITS} {SCALER} {QUADRUPLER} }}")
        wait_until(lambda: steadily(url, "tripler", 404), 60, "the model removed gone from both workers")
        write_config(three_models.config, THREE_MODELS)
        wait_until(lambda: steadily(url, "tripler", 200) and steadily(url, "quadrupler", 404), 60, "config restored")
        unloaded = requests.post(f"{url}/v2/repository/models/scaler/unload", timeout=60)
        assert unloaded.status_code == 200
        wait_until(lambda: steadily(url, "scaler", 404), 30, "the other worker following the unload")
        assert requests.post(f"{url}/v2/repository/models/scaler/load", timeout=60).status_code == 200
        wait_until(lambda: steadily(url, "scaler", 200), 30, "the other worker following the load")
    finally:
        stop.set()
        client.join(60)
    assert len(statuses) > 20 and set(statuses) == {200}, f"the model that did not change: {sorted(set(statuses))}"
    assert "model quadrupler serves" in three_models.log() and "let go of" in three_models.log()
