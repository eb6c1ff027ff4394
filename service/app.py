"""The Flask application factory: one worker's model, batcher, protocols and routes."""

from __future__ import annotations

import logging
import logging.config
import time

from flask import Flask, Response, request

from service.backends.base import ModelLoadError, ServedModel
from service.batching.turns import PassTurns
from service.caching.result_cache import build_result_cache
from service.catalog import served_models, serves_catalog
from service.errors import WsgiApp, render
from service.hosting.builder import ModelHosting, build_batcher
from service.hosting.control import ControlFile
from service.hosting.watcher import CatalogWatcher
from service.jobs.service import build_jobs
from service.operations import api_docs, health
from service.pipeline.answers import api_error_for
from service.pipeline.inference import PROTOCOL_KEY, ROUTE_KEY
from service.pipeline.model_server import CallServer, HostedModel, ModelServer
from service.protocols import PROTOCOLS, jobs_rest
from service.settings import Settings, current_settings
from service.sizing.placement import current_placement
from service.telemetry import logs, metrics
from service.threads import gevent_is_active
from service.version_policy import parse_labels
from service.versions.registry import ModelVersions
from service.web.access import AccessLayer, route_template
from service.web.auth import ApiKeyGuard, parse_api_keys

log = logging.getLogger(__name__)

_PROTOCOL_BLUEPRINTS = frozenset(protocol.blueprint.name for protocol in PROTOCOLS)  # named after their protocol


def create_app(settings: Settings | None = None, model: ServedModel | None = None) -> Flask:
    """Build the app; without `model`, configure the runtime for this worker and load every served model's versions.

    Every version is warmed up at every padded batch size before the app is returned, so a
    Gunicorn worker accepts no connection before it can serve at full speed. Each model has its
    own batcher; with several, their passes take turns (service/batching/turns.py). A model with a
    base path then serves its new versions as they appear (service/versions/), and a model config
    file or repository its new models (service/hosting/).
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
        server = _serve_configured_models(settings)
    else:
        started = time.monotonic()
        warm_up_seconds = model.warm_up(repeats=5)
        versions = ModelVersions(model.name, parse_labels(settings.model_version_labels))
        versions.add(model.version, model.path, model, time.monotonic() - started)
        server = ModelServer(settings, {})
        hosted = HostedModel(settings, versions, build_batcher(settings, warm_up_seconds, model.name))
        server.models = {model.name: hosted}
        ModelHosting(server, None, None).serve(hosted)
    first = next(iter(server.models.values()))
    server.cache = build_result_cache(settings, first.versions.latest(), first.batcher.full_pass_seconds())
    server.jobs = build_jobs(
        settings, server.batcher_for, lease_model=server.lease, on_durability=metrics.jobs_store_durability
    )
    app.extensions["model_server"] = server
    server.jobs.runner.start()
    served = app.wsgi_app
    for protocol in PROTOCOLS:  # each answers its inference requests before Flask, and passes the rest on
        served = protocol.endpoint(server, served)
    app.wsgi_app = outer_layers(settings, served)
    metrics.worker_serving()
    server.ready = True
    return app


def _serve_configured_models(settings: Settings) -> ModelServer:
    """This worker's models, each loaded and routed to; with a config file or repository, watched for changes.

    A configured model that does not load is reported and left out, and the others serve; when
    none loads, ModelLoadError with each one's error.
    """
    server = ModelServer(settings, {})
    if not serves_catalog(settings):
        hosting = ModelHosting(server, current_placement(), None)
        hosted = hosting.host(settings)
        server.models = {hosted.name: hosted}
        hosting.serve(hosted)
        return server
    placement = current_placement()
    lanes = max(settings.cpu_lanes, 1) if placement is not None and placement.gpu is None else 1
    hosting = ModelHosting(server, placement, PassTurns(settings.concurrent_batches), lanes)
    source = settings.model_config_file or settings.model_repository
    # The plan's budget for models (None: they all stay loaded); outside Gunicorn, MODEL_MEMORY_MB's
    budget_bytes = placement.model_memory_bytes if placement is not None else settings.model_memory_mb * 2**20 or None
    watcher = CatalogWatcher(server, hosting, ControlFile(settings.port, source), served_models(settings), budget_bytes)
    read_files = settings.model_config_poll_s > 0  # a worker started later serves what they say by then
    watcher.look(read_files, starting=True)
    if not server.models:
        reasons = "; ".join(f"{name}: {why}" for name, why in server.unavailable.items())
        raise ModelLoadError(f"no configured model serves ({reasons or 'all are unloaded'})")
    watcher.start(settings.model_config_poll_s if read_files else settings.model_poll_s or 1.0, read_files)
    server.repository = watcher
    return server


def outer_layers(settings: Settings, app: WsgiApp) -> WsgiApp:
    """What every request and gRPC call passes first: its request id, metrics and access line, then API keys."""
    keys = parse_api_keys(settings.api_keys)
    return AccessLayer(ApiKeyGuard(app, keys) if keys else app)


def serve_grpc(app: Flask) -> CallServer | None:
    """gunicorn.conf.py's `post_worker_init`, in the worker: gRPC on GRPC_PORT, unless GRPC_PORT is 0."""
    return start_grpc(app) if app.extensions["model_server"].settings.grpc_port else None


def start_grpc(app: Flask) -> CallServer:
    """In a worker, after `create_app`: serve the gRPC APIs on GRPC_PORT through the app's model server.

    TF Serving's, the Open Inference Protocol's and the health service; under gevent from the
    worker's hub (service/web/grpc_h2.py), under gthread by grpcio (docs/protocols.md). Not in `create_app`: gRPC must
    not start before the worker class has patched the standard library (gevent), nor in tests
    that build apps by the dozen.
    """
    from service.protocols import grpc_calls, tfserving_grpc, v2_grpc  # gRPC's messages, only where it is served
    from service.web.grpc_health import LiveHealth
    from service.web.grpc_server import GrpcServer, method_table

    server: ModelServer = app.extensions["model_server"]
    settings = server.settings
    calls = outer_layers(settings, tfserving_grpc.calls(server, v2_grpc.calls(server, grpc_calls.unknown_method)))
    methods = {
        **dict.fromkeys(tfserving_grpc.METHODS, tfserving_grpc.PROTOCOL),
        **dict.fromkeys(v2_grpc.METHODS, v2_grpc.PROTOCOL),
    }
    streams = {v2_grpc.MODEL_STREAM_INFER: (v2_grpc.PROTOCOL, v2_grpc.stream_infer)}
    services = sorted({method.strip("/").split("/")[0] for method in [*methods, *streams]})
    health_service = LiveHealth(services, serving=lambda: health.unready_reason(server) is None)
    table = method_table(calls, methods, streams, health_service)
    if gevent_is_active():
        from service.web.grpc_h2 import H2GrpcServer

        server.grpc = H2GrpcServer(table, health_service, settings, settings.gevent_connections)
    else:
        server.grpc = GrpcServer(table, health_service, settings, settings.request_threads)
    server.grpc.start()
    return server.grpc


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
