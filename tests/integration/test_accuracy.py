"""Statistical checks of the served demo model: every held-out image through HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.integration

MIN_ACCURACY = 0.95
MAX_TOTAL_VARIATION = 0.05


def test_held_out_accuracy_and_class_balance_over_http(demo_server, demo_holdout):
    check_accuracy(demo_server, demo_holdout)


def test_held_out_accuracy_and_class_balance_through_the_onnx_backend(onnx_server, demo_holdout):
    check_accuracy(onnx_server, demo_holdout)


def check_accuracy(server, demo_holdout) -> None:
    images, labels = demo_holdout
    assert len(images) >= 0.4 * 1797  # at least 40% of the digits were held out of training

    def classify(image):
        answer = requests.post(f"{server.url}/predict", data=json.dumps({"instances": [image.tolist()]}), timeout=60)
        answer.raise_for_status()
        return int(np.argmax(answer.json()["predictions"][0]))

    with ThreadPoolExecutor(16) as pool:
        predicted = np.array(list(pool.map(classify, images)))
    accuracy = float(np.mean(predicted == labels))
    assert accuracy >= MIN_ACCURACY, accuracy
    true_distribution = np.bincount(labels, minlength=10) / len(labels)
    predicted_distribution = np.bincount(predicted, minlength=10) / len(predicted)
    total_variation = 0.5 * np.abs(true_distribution - predicted_distribution).sum()
    assert total_variation <= MAX_TOTAL_VARIATION, total_variation
