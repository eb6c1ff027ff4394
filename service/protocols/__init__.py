"""The protocols the server speaks, one module each, all over the same batcher.

A protocol module provides:
- `endpoint(server, fallback)`: WSGI middleware that answers its inference requests before
  Flask (the hot path) and hands every other request to `fallback`;
- `blueprint`: a Flask blueprint with its other routes (status, metadata);
- `match_inference(path)`: the `InferenceTarget` an inference path names, else None; the
  workers ask it which requests the fast path and the early refusal may take;
- `INFERENCE_ROUTES`: the templates of its inference paths (metrics' route label, the API document).
Everything between decoding and encoding is the way every request goes (service/pipeline/inference.py).
Adding a protocol is one module and one line in PROTOCOLS. `jobs_rest` is the jobs API: a predict body
as a background job.
"""

from __future__ import annotations

from service.pipeline.inference import InferenceTarget
from service.protocols import tfserving_rest, v2_rest

PROTOCOLS = (tfserving_rest, v2_rest)


def match_inference(path: str) -> InferenceTarget | None:
    """The inference request a path names under any protocol spoken here, else None."""
    for protocol in PROTOCOLS:
        target = protocol.match_inference(path)
        if target is not None:
            return target
    return None
