"""The Open Inference Protocol's routes over the fake model: health, metadata, readiness, infer, and shared batches."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tests.support import infer_document, rows


def test_health_server_metadata_and_model_readiness(client, app):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    server = client.get("/v2").get_json()
    assert server["name"] == "tf-model-server" and "binary_tensor_data" in server["extensions"]
    assert client.get("/v2/models/fake/ready").status_code == 200
    assert client.get("/v2/models/fake/versions/1/ready").status_code == 200
    app.extensions["model_server"].ready = False
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/models/fake/ready").status_code == 503


def test_model_metadata_names_the_tensors_and_an_unknown_model_is_a_json_404(client):
    metadata = client.get("/v2/models/fake").get_json()
    assert metadata["name"] == "fake" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get("/v2/models/fake/versions/1").get_json() == metadata
    for path in ("/v2/models/other", "/v2/models/fake/versions/2", "/v2/models/other/ready"):
        answer = client.get(path)
        assert answer.status_code == 404 and "error" in answer.get_json()


def test_infer_answers_json_tensors_and_echoes_the_id(client):
    answer = client.post("/v2/models/fake/infer", data=orjson.dumps(infer_document(rows(2), id="abc")))
    assert answer.status_code == 200, answer.get_data()
    body = answer.get_json()
    assert body["id"] == "abc" and body["model_name"] == "fake" and body["model_version"] == "1"
    assert body["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [2, 3], "data": (np.array(rows(2), np.float32) * 2).ravel().tolist()}
    ]
    assert int(answer.headers["X-Batch-Size"]) >= 1


def test_infer_takes_and_gives_binary_tensors(client):
    x = np.array(rows(3), np.float32)
    tensor = {"name": "x", "datatype": "FP32", "shape": [3, 3], "parameters": {"binary_data_size": x.nbytes}}
    header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    answer = client.post(
        "/v2/models/fake/versions/1/infer",
        data=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 200, answer.get_data()
    assert answer.headers["Content-Type"] == "application/octet-stream"
    length = int(answer.headers["Inference-Header-Content-Length"])
    body = answer.get_data()
    (output,) = orjson.loads(body[:length])["outputs"]
    assert output["parameters"]["binary_data_size"] == x.nbytes
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4").reshape(3, 3), x * 2)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v2/models/fake/infer", b"not json", 400),
        ("/v2/models/fake/infer", orjson.dumps({"inputs": [{"name": "x"}]}), 400),
        ("/v2/models/other/infer", orjson.dumps(infer_document(rows(1))), 404),
        ("/v2/models/fake/versions/9/infer", orjson.dumps(infer_document(rows(1))), 404),
    ],
)
def test_infer_mistakes_are_4xx_with_an_error_body(client, path, body, status):
    answer = client.post(path, data=body)
    assert answer.status_code == status and answer.get_json()["error"]


def test_infer_takes_only_post(client):
    answer = client.get("/v2/models/fake/infer")
    assert answer.status_code == 405 and answer.headers["Allow"] == "POST"


def stats_of(client, path: str = "/v2/models/fake/stats") -> dict:
    answer = client.get(path)
    assert answer.status_code == 200, answer.get_data()
    (stats,) = answer.get_json()["model_stats"]
    return stats


def test_statistics_count_each_request_its_stages_and_its_passes_by_size(client):
    before = stats_of(client)
    for count in (2, 1):
        answer = client.post("/v2/models/fake/infer", data=orjson.dumps(infer_document(rows(count))))
        assert answer.status_code == 200
    assert client.post("/v2/models/fake/infer", data=b"{}").status_code == 400
    after = stats_of(client)
    assert (after["name"], after["version"]) == ("fake", "1")
    grew = {
        stage: after["inference_stats"][stage]["count"] - before["inference_stats"][stage]["count"]
        for stage in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    }
    assert grew == {"success": 2, "fail": 1, "queue": 2, "compute_input": 2, "compute_infer": 2, "compute_output": 2}
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["inference_count"] - before["inference_count"] == 3  # sequential requests: passes of 2 and 1
    assert after["execution_count"] - before["execution_count"] == 2
    sizes = {entry["batch_size"]: entry["compute_infer"]["count"] for entry in after["batch_stats"]}
    assert {1, 2} <= set(sizes)
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 0
    assert stats_of(client, "/v2/models/stats") == stats_of(client, "/v2/models/fake/versions/1/stats")
    for path in ("/v2/models/other/stats", "/v2/models/fake/versions/2/stats"):
        answer = client.get(path)
        assert answer.status_code == 404 and "error" in answer.get_json()


def test_model_configuration_says_the_batch_sizes_batching_and_tensors(client, settings):
    config = client.get("/v2/models/fake/config").get_json()
    assert (config["name"], config["max_batch_size"]) == ("fake", settings.max_batch_size)
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}]
    batching = config["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == settings.batch_timeout_ms * 1000  # the fixed policy's
    assert batching["default_queue_policy"] == {"max_queue_size": settings.max_queue}
    assert client.get("/v2/models/fake/versions/1/config").get_json() == config
    assert client.get("/v2/models/other/config").status_code == 404
