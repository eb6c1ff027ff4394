"""The Flask application factory: one worker's model, batcher, protocols and routes."""

from __future__ import annotations

import gc
import logging
import logging.config
import time

from flask import Flask, Response, request

from service.backends import backend_for, load_served_model
from service.backends.base import ServedModel
from service.batching.batcher import Batcher
from service.batching.cost_model import CostModel, largest_paying_size
from service.batching.policy import AdaptivePolicy, FixedTimeout, Observations
from service.caching.result_cache import build_result_cache
from service.errors import WsgiApp, render
from service.jobs import routes as jobs_routes
from service.jobs.service import build_jobs
from service.model_server import ModelServer
from service.operations import api_docs, health, logs, metrics
from service.protocols import PROTOCOLS
from service.protocols.common import admission_budget_s, api_error_for, request_timeout_s
from service.settings import Settings, load_settings
from service.sizing.placement import current_placement
from service.threads import gevent_is_active
from service.web.access import PROTOCOL_KEY, ROUTE_KEY, AccessLayer, route_template
from service.web.auth import ApiKeyGuard, parse_api_keys
from service.web.grpc_server import GrpcServer

log = logging.getLogger(__name__)

_PROTOCOL_BLUEPRINTS = frozenset(protocol.blueprint.name for protocol in PROTOCOLS)  # named after their protocol


def create_app(settings: Settings | None = None, model: ServedModel | None = None) -> Flask:
    """Build the app; without `model`, configure the model's runtime for this worker and load MODEL_PATH.

    The model is warmed up at every padded batch size before the app is returned, so a
    Gunicorn worker accepts no connection before it can serve at full speed.
    """
    settings = settings or load_settings()
    if not logging.getLogger().handlers:  # under Gunicorn the master has configured it (logconfig_dict)
        logging.config.dictConfig(logs.logging_config(settings))
    started = time.monotonic()
    memory_check_passes = 0
    if model is None:
        model, on_gpu = _load_model_for_this_worker(settings)
        memory_check_passes = settings.concurrent_batches if on_gpu else 0
    batcher = build_batcher(settings, model, model.warm_up(repeats=5, memory_check_passes=memory_check_passes))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    for blueprint in (*(p.blueprint for p in PROTOCOLS), jobs_routes.blueprint, health.blueprint, api_docs.blueprint):
        app.register_blueprint(blueprint)
    app.before_request(_label_route)
    app.register_error_handler(Exception, _error_answer)
    cache = build_result_cache(settings, model, batcher.full_pass_seconds())
    jobs = build_jobs(settings, batcher)
    server = ModelServer(settings, model, batcher, cache, jobs, ready=True)
    app.extensions["model_server"] = server
    jobs.runner.start()
    served = app.wsgi_app
    for protocol in PROTOCOLS:  # each answers its inference requests before Flask, and passes the rest on
        served = protocol.endpoint(server, served)
    app.wsgi_app = outer_layers(settings, served)
    metrics.worker_serving(model.name, model.version, time.monotonic() - started)
    # TensorFlow and the model leave some 365,000 long-lived objects, which every full collection
    # of the cyclic garbage collector walked: a pause of 0.2-0.3 s for every thread that needs the
    # GIL, several times a minute under load (BENCHMARKS.md). Frozen, the collector skips them.
    gc.freeze()
    return app


def outer_layers(settings: Settings, app: WsgiApp) -> WsgiApp:
    """What every request and gRPC call passes first: its request id, metrics and access line, then API keys."""
    keys = parse_api_keys(settings.api_keys)
    return AccessLayer(ApiKeyGuard(app, keys) if keys else app)


def start_grpc(app: Flask) -> GrpcServer:
    """In a worker, after `create_app`: serve TF Serving's gRPC API on GRPC_PORT through the app's model server.

    Not in `create_app`: gRPC must not start before the worker class has patched the standard
    library (gevent), nor in tests that build apps by the dozen.
    """
    from service.protocols import tfserving_grpc  # TF Serving's messages, only where gRPC is served

    server: ModelServer = app.extensions["model_server"]
    settings = server.settings
    concurrency = settings.gevent_connections if gevent_is_active() else settings.request_threads
    calls = outer_layers(settings, tfserving_grpc.calls(server))
    server.grpc = GrpcServer(calls, tfserving_grpc.METHODS, tfserving_grpc.PROTOCOL, settings, concurrency)
    server.grpc.start()
    return server.grpc


def build_batcher(settings: Settings, model: ServedModel, warm_up_seconds: dict[int, float]) -> Batcher:
    """The worker's batcher, sized and seeded by the warm-up probe (`ServedModel.warm_up`).

    The largest batch is the largest size the warm-up could run (on a GPU, what fits its
    memory). Under the adaptive policy a batch counts as full at the size where larger ones
    stop paying, and the probe's timings are its first cost model.
    """
    largest = max(warm_up_seconds)
    observations = Observations(CostModel(warm_up_seconds))
    if settings.batch_policy == "adaptive":
        policy = AdaptivePolicy(observations, settings.latency_slo_s, largest)
        preferred = largest_paying_size(warm_up_seconds)
    else:
        policy, preferred = FixedTimeout(settings.batch_timeout_ms / 1000), largest
    log.info("batching: %s policy, batches up to %d instances, full at %d", settings.batch_policy, largest, preferred)
    return Batcher(
        model.predict,
        policy,
        max_batch_size=largest,
        max_queue=settings.max_queue,
        concurrent_batches=settings.concurrent_batches,
        preferred_batch_size=preferred,
        observations=observations,
        observer=metrics.BatchMetrics(),
        default_budget_s=admission_budget_s(settings, request_timeout_s(settings, None)),
    )


def _load_model_for_this_worker(settings: Settings) -> tuple[ServedModel, bool]:
    """The model, loaded after its runtime is configured for this worker's slot; and whether it runs on a GPU."""
    placement = current_placement()
    if placement is not None:
        backend = backend_for(settings.model_path, settings.model_backend)
        devices = backend.configure(
            placement.intra_op_threads, placement.inter_op_threads, placement.gpu_memory_limit_mb
        )
        log.info("worker slot %d: %s; %s devices %s", placement.slot, placement.device, backend.name, devices)
    model = load_served_model(
        settings.model_path,
        settings.served_model_name,
        settings.model_version,
        settings.padded_batch_sizes(),
        settings.model_backend,
    )
    return model, placement is not None and placement.gpu is not None


def _label_route() -> None:
    """Name the matched route and its protocol for the access layer's metrics and log (unmatched: unlabelled)."""
    if request.url_rule is not None:
        request.environ[ROUTE_KEY] = route_template(request.url_rule.rule)
        if request.blueprint in _PROTOCOL_BLUEPRINTS:
            request.environ[PROTOCOL_KEY] = request.blueprint


def _error_answer(error: Exception) -> Response:
    """Flask's routes' errors, answered as every protocol's are (service/protocols/common.py)."""
    status, body, headers = render(api_error_for(error))
    return Response(body, status=status, mimetype="application/json", headers=headers)
