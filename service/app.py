"""The Flask application factory: one worker's model, batcher, protocols and routes."""

from __future__ import annotations

import logging
import logging.config
import time
from functools import partial

from flask import Flask, Response, request

from service.backends.base import ServedModel, predict_each_model
from service.batching.batcher import Batcher
from service.batching.cost_model import CostModel, largest_paying_size
from service.batching.policy import AdaptivePolicy, FixedTimeout, Observations
from service.batching.turns import PassTurns
from service.caching.result_cache import build_result_cache
from service.catalog import served_models
from service.errors import WsgiApp, render
from service.jobs.service import build_jobs
from service.operations import api_docs, health
from service.pipeline.answers import api_error_for
from service.pipeline.inference import PROTOCOL_KEY, ROUTE_KEY, admission_budget_s, request_timeout_s
from service.pipeline.model_server import HostedModel, ModelServer
from service.protocols import PROTOCOLS, jobs_rest
from service.settings import Settings, current_settings
from service.sizing.placement import current_placement
from service.telemetry import logs, metrics
from service.threads import gevent_is_active
from service.version_policy import parse_labels
from service.versions.registry import ModelVersion, ModelVersions, VersionState
from service.versions.worker import VersionLoader
from service.web.access import AccessLayer, route_template
from service.web.auth import ApiKeyGuard, parse_api_keys
from service.web.grpc_server import GrpcServer

log = logging.getLogger(__name__)

_PROTOCOL_BLUEPRINTS = frozenset(protocol.blueprint.name for protocol in PROTOCOLS)  # named after their protocol


def create_app(settings: Settings | None = None, model: ServedModel | None = None) -> Flask:
    """Build the app; without `model`, configure the runtime for this worker and load every served model's versions.

    Every version is warmed up at every padded batch size before the app is returned, so a
    Gunicorn worker accepts no connection before it can serve at full speed. Each model has its
    own batcher; with several, their passes take turns (service/batching/turns.py). A model with a
    base path then serves its new versions as they appear (service/versions/).
    """
    settings = settings or current_settings()  # under Gunicorn: the master's, after its last SIGHUP
    if not logging.getLogger().handlers:  # under Gunicorn the master has configured it (logconfig_dict)
        logging.config.dictConfig(logs.logging_config(settings))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    for blueprint in (*(p.blueprint for p in PROTOCOLS), jobs_rest.blueprint, health.blueprint, api_docs.blueprint):
        app.register_blueprint(blueprint)
    app.before_request(_label_route)
    app.register_error_handler(Exception, _error_answer)
    if model is None:
        models = served_models(settings)
        turns = PassTurns(settings.concurrent_batches) if len(models) > 1 else None
        loaders, hosted, configured = {}, {}, set()
        for model_settings in models:
            loader = VersionLoader(model_settings, current_placement(), configured)
            versions = loader.initial_versions()
            hosted[versions.name] = _hosted(model_settings, versions, versions.latest().warm_up_seconds, turns)
            loaders[versions.name] = loader
    else:
        started = time.monotonic()
        warm_up_seconds = model.warm_up(repeats=5)
        versions = ModelVersions(model.name, parse_labels(settings.model_version_labels))
        versions.add(model.version, model.path, model, time.monotonic() - started)
        hosted, loaders = {model.name: _hosted(settings, versions, warm_up_seconds, None)}, {}
    first = next(iter(hosted.values()))
    cache = build_result_cache(settings, first.versions.latest(), first.batcher.full_pass_seconds())
    server = ModelServer(settings, hosted, cache, ready=True)
    server.jobs = build_jobs(
        settings, server.batcher_for, lease_model=server.lease, on_durability=metrics.jobs_store_durability
    )
    app.extensions["model_server"] = server
    server.jobs.runner.start()
    served = app.wsgi_app
    for protocol in PROTOCOLS:  # each answers its inference requests before Flask, and passes the rest on
        served = protocol.endpoint(server, served)
    app.wsgi_app = outer_layers(settings, served)
    for hosted_model in hosted.values():
        for number in sorted(hosted_model.versions.numbers(VersionState.AVAILABLE)):
            metrics.version_serving(hosted_model.name, number, hosted_model.versions.get(number).load_s)
    metrics.worker_serving()
    for name, loader in loaders.items():
        hosted_model = hosted[name]
        if hosted_model.settings.model_base_path:
            hosted_model.poller = loader.poller(
                hosted_model.versions, partial(_version_available, server), partial(_version_released, server, name)
            )
            if settings.model_poll_s > 0:
                hosted_model.poller.start(settings.model_poll_s)
    return app


def _hosted(
    settings: Settings, versions: ModelVersions, warm_up_seconds: dict[int, float], turns: PassTurns | None
) -> HostedModel:
    """One model as this worker serves it: its versions, and its batcher seeded by its latest version's warm-up."""
    return HostedModel(settings, versions, build_batcher(settings, warm_up_seconds, versions.name, turns))


def _version_available(server: ModelServer, version: ModelVersion) -> None:
    """A new version serves: its metrics, and its cache identity (its files hashed now, not on a request).

    The batcher's cost model is kept: it learns the new version's passes as they run, where the
    new version's warm-up timings were taken beside the passes of the version serving.
    """
    model = version.model
    server.cache_for(model)
    metrics.version_serving(model.name, model.version, version.load_s)


def _version_released(server: ModelServer, model_name: str, version: ModelVersion) -> None:
    server.forget_cache(model_name, version.number)
    metrics.version_released(model_name, version.number)


def outer_layers(settings: Settings, app: WsgiApp) -> WsgiApp:
    """What every request and gRPC call passes first: its request id, metrics and access line, then API keys."""
    keys = parse_api_keys(settings.api_keys)
    return AccessLayer(ApiKeyGuard(app, keys) if keys else app)


def serve_grpc(app: Flask) -> GrpcServer | None:
    """gunicorn.conf.py's `post_worker_init`, in the worker: gRPC on GRPC_PORT, unless GRPC_PORT is 0."""
    return start_grpc(app) if app.extensions["model_server"].settings.grpc_port else None


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


def build_batcher(
    settings: Settings, warm_up_seconds: dict[int, float], model_name: str, turns: PassTurns | None = None
) -> Batcher:
    """A model's batcher, sized and seeded by the warm-up probe (`ServedModel.warm_up`) of its latest version.

    The largest batch is the largest size the warm-up could run (on a GPU, what fits its
    memory). Under the adaptive policy a batch counts as full at the size where larger ones
    stop paying, and the probe's timings are its first cost model. Each queued request names
    the version that runs it (`predict_each_model`).
    """
    largest = max(warm_up_seconds)
    observations = Observations(CostModel(warm_up_seconds))
    if settings.batch_policy == "adaptive":
        policy = AdaptivePolicy(observations, settings.latency_slo_s, largest)
        preferred = largest_paying_size(warm_up_seconds)
    else:
        policy, preferred = FixedTimeout(settings.batch_timeout_ms / 1000), largest
    log.info(
        "batching %s: %s policy, batches up to %d instances, full at %d",
        model_name, settings.batch_policy, largest, preferred,
    )  # fmt: skip
    return Batcher(
        predict_each_model,
        policy,
        max_batch_size=largest,
        max_queue=settings.max_queue,
        concurrent_batches=settings.concurrent_batches,
        preferred_batch_size=preferred,
        observations=observations,
        observer=metrics.BatchMetrics(model_name),
        name=f"batcher-{model_name}",
        default_budget_s=admission_budget_s(settings, request_timeout_s(settings, None)),
        turns=turns,
    )


def _label_route() -> None:
    """Name the matched route and its protocol for the access layer's metrics and log (unmatched: unlabelled)."""
    if request.url_rule is not None:
        request.environ[ROUTE_KEY] = route_template(request.url_rule.rule)
        if request.blueprint in _PROTOCOL_BLUEPRINTS:
            request.environ[PROTOCOL_KEY] = request.blueprint


def _error_answer(error: Exception) -> Response:
    """Flask's routes' errors, answered as every protocol's are (service/pipeline/answers.py)."""
    status, body, headers = render(api_error_for(error))
    return Response(body, status=status, mimetype="application/json", headers=headers)
