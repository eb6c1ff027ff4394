"""The one request builder of the load tools: predict bodies shaped from the served model's own metadata.

The Python load generator (loadgen.py), the benchmarks that use it or wrk (bench.py writes the
body file that wrk_predict.lua sends), and Locust (locustfiles/checkout.py) all build their
requests here, so they work for any model. k6 (k6_checkout.js) cannot import Python; it shapes
its instance by the same rule: the first input, variable dimensions as 8.
"""

from __future__ import annotations

import json
import random
import urllib.request


def sample_body(url: str, model_name: str, instances: int = 1) -> bytes:
    """A predict body of `instances` rows shaped after the model's first input, from its metadata."""
    with urllib.request.urlopen(f"{url}/v1/models/{model_name}/metadata") as answer:
        metadata = json.load(answer)
    rng = random.Random(0)
    return json.dumps({"instances": [sample_instance(metadata, rng) for _ in range(instances)]}).encode()


def sample_instance(metadata: dict, rng: random.Random):
    """One instance for the first input of a metadata answer: its shape (variable dimensions as 8) and dtype.

    For load generators: they shape their requests from the server's own answer, so they work for any model.
    """
    inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    spec = next(iter(inputs.values()))
    dims = [int(dim["size"]) for dim in spec["tensor_shape"]["dim"]][1:]

    def nested(shape):
        if not shape:
            return _sample_value(spec["dtype"], rng)
        return [nested(shape[1:]) for _ in range(8 if shape[0] < 0 else shape[0])]

    return nested(dims)


def _sample_value(dtype: str, rng: random.Random):
    if dtype == "DT_BOOL":
        return rng.random() < 0.5
    if dtype == "DT_STRING":
        return "product"
    if "INT" in dtype:
        return rng.randint(0, 9)
    return round(rng.random(), 4)
