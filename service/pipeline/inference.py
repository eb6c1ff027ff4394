"""One inference request's way through a worker, the same for every protocol.

A protocol's endpoint (`InferenceEndpoint`) names its paths, decodes its bodies and encodes its
answers. Between those, every protocol's request goes the same way: the model version it names
(leased until it is answered), its deadline, the result cache's whole answers, admission before
decoding (a refusal under overload must cost far less than the work), the batcher, and one answer
to whatever went wrong. Each request's stages: decode (on the request's own thread or greenlet),
batch and predict (in the batcher's thread), then encode (back on the request's thread).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from service.backends.base import Arrays, ModelInputs, ServedModel
from service.batching.bulk import predict_instances
from service.errors import BadRequest, MethodNotAllowed, WsgiApp, render, write_json
from service.pipeline.answers import NotReady, api_error_for, forward_pass_failures
from service.pipeline.body import read_body
from service.pipeline.model_server import HostedModel, ModelServer
from service.settings import Settings
from service.telemetry import metrics

# What the way records in the request's WSGI environ, for the access layer (service/web/access.py).
ROUTE_KEY = "model_server.route"  # the route template, set by whoever matched the path
PROTOCOL_KEY = "model_server.protocol"  # the protocol of the route matched
BATCH_SIZE_KEY = "model_server.batch_size"  # instances in the request's forward pass
MODEL_KEY = "model_server.model"  # (name, version) of the model version that served it
REFUSED_KEY = "model_server.refused"  # why it was refused unrun; refusals get no access line
BODY_KEY = "service.request_body"  # the body, once read


@dataclass(frozen=True)
class InferenceTarget:
    """An inference request's path, understood: its protocol, route template (for metrics) and the model it names."""

    protocol: str
    route: str
    model_name: str | None  # None: the one model served
    version: int | None  # None: the latest version served (or the label's)
    label: str | None = None  # a version label (MODEL_VERSION_LABELS)


def request_timeout_s(settings: Settings, header: str | None) -> float | None:
    """The client's `X-Request-Timeout-Ms`, at most REQUEST_TIMEOUT_MS; else that; None for no deadline."""
    server_ms = settings.request_timeout_ms or None
    if header is None:
        return server_ms / 1000 if server_ms else None
    try:
        client_ms = float(header)
    except ValueError:
        client_ms = math.nan
    if not (math.isfinite(client_ms) and client_ms > 0):
        raise BadRequest(f"X-Request-Timeout-Ms {header!r} is not a positive number of milliseconds")
    return min(client_ms, server_ms or client_ms) / 1000


def admission_budget_s(settings: Settings, timeout_s: float | None) -> float | None:
    """The time a request is admitted for: its deadline (`request_timeout_s`), else LATENCY_SLO_MS, else none."""
    return timeout_s if timeout_s is not None else settings.latency_slo_s


# Set when the request's model was not loaded as it arrived, so it waited for its load (MODEL_MEMORY_MB).
ON_DEMAND_HEADER = "X-Model-Loaded-On-Demand"


class Decoded(Protocol):
    """What a protocol decodes a request into: arrays with a leading batch dimension of `count`."""

    inputs: Arrays
    count: int


class InferenceEndpoint:
    """WSGI middleware: `POST` to one of the protocol's inference paths is answered here, the rest by `fallback`."""

    protocol: str  # names the protocol in the result cache's keys of whole answers

    def __init__(self, server: ModelServer, fallback: WsgiApp):
        self._server = server
        self._fallback = fallback

    @staticmethod
    def match_inference(path: str) -> InferenceTarget | None:
        raise NotImplementedError

    def decode(self, body: bytes, environ: dict, model: ServedModel) -> Decoded:
        raise NotImplementedError

    def encode(self, decoded: Any, result: Arrays, model: ServedModel) -> tuple[bytes, dict[str, str]]:
        """The answer's body and headers (a `Content-Type` other than JSON's among them)."""
        raise NotImplementedError

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        target = self.match_inference(environ.get("PATH_INFO", ""))
        if target is None:
            return self._fallback(environ, start_response)
        environ[ROUTE_KEY], environ[PROTOCOL_KEY] = target.route, target.protocol
        try:
            status, body, headers = 200, *self._infer(target, environ)
        except Exception as error:
            answer = api_error_for(error, self._server)
            if getattr(answer, "reason", None) is not None:
                environ[REFUSED_KEY] = answer.reason
            status, body, headers = render(answer)
        return write_json(start_response, status, body, headers)

    def body(self, environ: dict) -> bytes:
        """The request's body, read once: `refine_target` may need it before admission, the rest of the way after."""
        if BODY_KEY not in environ:
            environ[BODY_KEY] = read_body(environ, self._server.settings.max_body_bytes)
        return environ[BODY_KEY]

    def refine_target(self, target: InferenceTarget, environ: dict) -> InferenceTarget:
        """The target once what only the body names is known (gRPC's message names the version); default: as matched."""
        return target

    def _infer(self, target: InferenceTarget, environ: dict) -> tuple[bytes, dict[str, str]]:
        received_at = time.monotonic()
        if environ["REQUEST_METHOD"] != "POST":
            raise MethodNotAllowed(f"{environ['REQUEST_METHOD']} is not allowed here; inference takes POST", "POST")
        target = self.refine_target(target, environ)
        server = self._server
        loaded_for_it = server.repository is not None and server.repository.loads_on_demand
        loaded_for_it = loaded_for_it and target.model_name is not None and target.model_name not in server.models
        with server.lease_hosted(target.model_name, target.version, target.label) as (hosted, model):
            environ[MODEL_KEY] = (model.name, model.version)  # the lease is released once answered
            try:
                answer, headers = self._infer_with(hosted, model, environ, received_at)
            except Exception:
                metrics.inference_failed(model.name, model.version, time.monotonic() - received_at)
                raise
        return answer, {**headers, ON_DEMAND_HEADER: "1"} if loaded_for_it else headers

    def _infer_with(
        self, hosted: HostedModel, model: ServedModel, environ: dict, received_at: float
    ) -> tuple[bytes, dict[str, str]]:
        server = self._server
        settings, batcher = hosted.settings, hosted.batcher  # the leased version's model's
        timeout_s = request_timeout_s(settings, environ.get("HTTP_X_REQUEST_TIMEOUT_MS"))
        budget_s = admission_budget_s(settings, timeout_s)
        if not server.ready:
            raise NotReady
        cache, body = server.cache_for(model), None
        if cache is not None:  # a repeated body needs no room in the batcher: answer it before asking for any
            body = self.body(environ)
            if (kept := cache.repeated_answer(self.protocol, body)) is not None:
                environ[BATCH_SIZE_KEY] = 0
                metrics.predicted(model.name, model.version, kept[1])
                metrics.inference_answered(model.name, model.version, time.monotonic() - received_at, None)
                return kept[0], {"X-Batch-Size": "0"}
        # Before the body is decoded: a refusal under overload must cost far less than the work.
        batcher.check_room(1, budget_s)
        if body is None:
            body = self.body(environ)
        decoded = self.decode(body, environ, model)
        spent_s = time.monotonic() - received_at  # reading and decoding the body took some of the time allowed
        with forward_pass_failures():
            outcome = predict_instances(
                batcher,
                cache,
                decoded.inputs,
                decoded.count,
                timeout_s - spent_s if timeout_s is not None else None,
                budget_s - spent_s if budget_s is not None else None,
                payload_of=partial(ModelInputs, model),
            )
        environ[BATCH_SIZE_KEY] = outcome.batch_size
        answer, headers = self.encode(decoded, outcome.result, model)
        metrics.predicted(model.name, model.version, decoded.count)
        queue_wait_s = outcome.queue_wait_s if outcome.batch_size else None
        metrics.inference_answered(model.name, model.version, time.monotonic() - received_at, queue_wait_s)
        wholly_cached = outcome.batch_size == 0 and decoded.count <= batcher.max_batch_size
        if cache is not None and wholly_cached and not headers:  # JSON answers only: binary ones have headers
            cache.keep_answer(self.protocol, body, answer, decoded.count)  # seen twice: likely to be seen again
        return answer, {**headers, "X-Batch-Size": str(outcome.batch_size)}
