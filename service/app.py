"""The Flask application factory: one worker's model, batcher and routes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from service import routes
from service.batcher import Batcher
from service.errors import ApiError, NotFound, error_body
from service.model import ServedModel, load_served_model
from service.predict_endpoint import PredictEndpoint
from service.settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass
class ModelServer:
    """What one worker serves with; `ready` is true between warm-up and shutdown."""

    settings: Settings
    model: ServedModel
    batcher: Batcher
    ready: bool = False

    def model_for(self, name: str | None, version: int | None) -> ServedModel:
        """The served model if `name` and `version` (None: any) designate it; else NotFound."""
        model = self.model
        if name is not None and name != model.name:
            raise NotFound(f"model {name!r} is not served here; this server serves {model.name!r}")
        if version is not None and version != model.version:
            raise NotFound(f"model {model.name!r} has no version {version}; it serves version {model.version}")
        return model

    def close(self) -> bool:
        """Stop taking requests and answer every accepted one; True if done within the graceful timeout."""
        self.ready = False
        return self.batcher.close(timeout_s=self.settings.graceful_timeout_s)


def create_app(settings: Settings | None = None, model: ServedModel | None = None) -> Flask:
    """Build the app; without `model`, configure TensorFlow for this worker and load MODEL_PATH.

    The model is warmed up at every padded batch size before the app is returned, so a
    Gunicorn worker accepts no connection before it can serve at full speed.
    """
    settings = settings or load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
    )
    if model is None:
        model = _load_model_for_this_worker(settings)
    model.warm_up()
    batcher = Batcher(
        model.predict,
        max_batch_size=settings.max_batch_size,
        batch_timeout_s=settings.batch_timeout_ms / 1000,
        max_queue=settings.max_queue,
        concurrent_batches=settings.concurrent_batches,
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.url_map.converters["model_name"] = routes.ModelNameConverter
    app.register_blueprint(routes.blueprint)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    server = ModelServer(settings, model, batcher, ready=True)
    app.extensions["model_server"] = server
    app.wsgi_app = PredictEndpoint(server, app.wsgi_app)
    return app


def _load_model_for_this_worker(settings: Settings) -> ServedModel:
    from service import gpu, hooks

    placement = hooks.current_placement()
    if placement is not None:
        devices = gpu.configure_tensorflow(
            placement.intra_op_threads, placement.inter_op_threads, placement.gpu_memory_limit_mb
        )
        log.info("worker slot %d: %s; TensorFlow devices %s", placement.slot, placement.device, devices)
    return load_served_model(
        settings.model_path, settings.served_model_name, settings.model_version, settings.padded_batch_sizes()
    )


def _error_body(status: int, message: str, headers: dict | None = None) -> Response:
    return Response(error_body(message), status=status, mimetype="application/json", headers=headers)


def _api_error(error: ApiError) -> Response:
    if error.status >= 500:
        log.error("answering %d: %s", error.status, error.message)
    return _error_body(error.status, error.message, error.headers)


def _http_error(error: HTTPException) -> Response:
    headers = {"Allow": ", ".join(error.valid_methods)} if getattr(error, "valid_methods", None) else None
    return _error_body(error.code or 500, f"{error.name}: {error.description}", headers)


def _unexpected_error(error: Exception) -> Response:
    log.exception("unexpected error")
    return _error_body(500, f"internal error: {type(error).__name__}")
