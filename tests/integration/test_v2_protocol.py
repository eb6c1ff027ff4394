"""Triton's own HTTP client (tritonclient.http) against the live server, gthread and gevent: V2 unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration


@pytest.fixture
def client(demo_server):
    connection = triton.InferenceServerClient(demo_server.url.removeprefix("http://"), network_timeout=60)
    yield connection
    connection.close()


def tf_serving_predictions(server, images: np.ndarray) -> np.ndarray:
    answer = requests.post(f"{server.url}/v1/models/digits:predict", json={"instances": images.tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text
    return np.array(answer.json()["predictions"], np.float32)


def test_health_and_metadata_read_by_tritonclient(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and not client.is_model_ready("other")
    metadata = client.get_model_metadata("digits")
    (tensor,) = metadata["inputs"]
    assert tensor["datatype"] == "FP32" and tensor["shape"][0] == -1
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_gives_the_predictions_of_the_tf_serving_route(client, demo_server, demo_holdout, binary):
    images = demo_holdout[0][:5].astype(np.float32)
    metadata = client.get_model_metadata("digits")
    tensor = triton.InferInput(metadata["inputs"][0]["name"], list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    output_name = metadata["outputs"][0]["name"]
    result = client.infer(
        "digits", [tensor], request_id="r-7", outputs=[triton.InferRequestedOutput(output_name, binary_data=binary)]
    )
    assert result.get_response()["id"] == "r-7"
    np.testing.assert_array_equal(result.as_numpy(output_name), tf_serving_predictions(demo_server, images))


def test_a_mistake_reaches_tritonclient_as_an_error_with_the_servers_message(client, demo_holdout):
    tensor = triton.InferInput("wrong_name", [1, 8, 8, 1], "FP32")
    tensor.set_data_from_numpy(demo_holdout[0][:1].astype(np.float32))
    with pytest.raises(InferenceServerException, match="exactly the model's"):
        client.infer("digits", [tensor])


def test_statistics_sum_every_workers_requests_whichever_worker_answers(client, demo_server, demo_holdout):
    """Requests on new connections until both workers have served some; every stats read counts them all."""

    def successes() -> int:
        (stats,) = client.get_inference_statistics("digits")["model_stats"]
        return stats["inference_stats"]["success"]["count"]

    def served_by_worker() -> dict[int, int]:  # /stats is one worker's: read it until both have answered
        seen: dict[int, int] = {}
        while len(seen) < 2:
            stats = requests.get(f"{demo_server.url}/stats", timeout=60).json()
            seen[stats["pid"]] = stats["requests"]
        return seen

    before, served_before = successes(), served_by_worker()
    sent = 0
    while sent < 40:
        tf_serving_predictions(demo_server, demo_holdout[0][sent : sent + 1])  # a new connection each
        sent += 1
        if sent % 4 == 0 and all(count > served_before[pid] for pid, count in served_by_worker().items()):
            break
    assert all(count > served_before[pid] for pid, count in served_by_worker().items()), "one worker served all"
    assert [successes() for _ in range(4)] == [before + sent] * 4
    config = client.get_model_config("digits")
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [8, 8, 1]}]
