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
