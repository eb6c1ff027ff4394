"""What one worker serves with: its settings, model and batcher, shared by every protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from flask import Response, current_app

from service.backends.base import ServedModel
from service.batching.batcher import Batcher
from service.caching.result_cache import ResultCache
from service.errors import NotFound
from service.jobs.service import Jobs
from service.operations.refusals import RefusalSummary
from service.settings import Settings
from service.web.grpc_server import GrpcServer


@dataclass
class ModelServer:
    """One worker's model, batcher and result cache (None when off); `ready` is true between warm-up and shutdown."""

    settings: Settings
    model: ServedModel
    batcher: Batcher
    cache: ResultCache | None = None
    jobs: Jobs | None = None
    grpc: GrpcServer | None = None  # started in the worker after the app (service/web/grpc_server.py)
    ready: bool = False
    refusals: RefusalSummary = field(default_factory=RefusalSummary)

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
        # gRPC first: it takes no new call from now on, and the calls it has taken are still admitted.
        grpc_stopped = self.grpc.stop(self.settings.graceful_timeout_s) if self.grpc is not None else None
        self.ready = False
        if self.jobs is not None:
            self.jobs.runner.stop()
        closed = self.batcher.close(timeout_s=self.settings.graceful_timeout_s)
        if grpc_stopped is not None:
            closed = grpc_stopped(self.settings.graceful_timeout_s) and closed
        self.refusals.flush()
        return closed


def current_server() -> ModelServer:
    """In a Flask route: the worker's ModelServer (create_app keeps it in the app's extensions)."""
    return current_app.extensions["model_server"]


def json_response(body: dict, status: int = 200) -> Response:
    """A Flask route's JSON answer."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json")
