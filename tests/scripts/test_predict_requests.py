"""The load tools' request builder: every sample it builds is a request the model accepts."""

from __future__ import annotations

import json
import random

import pytest

from scripts.predict_requests import sample_instance
from service.backends.signature import ModelSignature, TensorInfo, describe_metadata
from service.protocols.tfserving_codec import decode_request


@pytest.mark.parametrize(
    ("info", "shape"),
    [
        (TensorInfo("pixels", "float32", (8, 8, 1)), (1, 8, 8, 1)),
        (TensorInfo("tokens", "int64", (None,)), (1, 8)),  # a variable dimension is sampled as 8
        (TensorInfo("flags", "bool", (3,)), (1, 3)),
        (TensorInfo("words", "string", (2,)), (1, 2)),
    ],
)
def test_a_sample_instance_is_a_request_the_model_accepts(info, shape):
    signature = ModelSignature(inputs=(info,), outputs=(TensorInfo("y", "float32", (1,)),))
    metadata = json.loads(json.dumps(describe_metadata("m", 1, signature)))  # as a client receives it
    instance = sample_instance(metadata, random.Random(0))
    decoded = decode_request(json.dumps({"instances": [instance]}).encode(), signature, max_instances=1)
    assert decoded.inputs[info.name].shape == shape
