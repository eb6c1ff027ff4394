"""What one worker serves with: its settings, model versions and batcher, shared by every protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from flask import Response, current_app

from service.backends.base import ServedModel
from service.batching.batcher import Batcher
from service.caching.result_cache import ResultCache, identity_of
from service.errors import NotFound
from service.jobs.service import Jobs
from service.settings import Settings
from service.telemetry.refusals import RefusalSummary
from service.versions.poller import VersionPoller
from service.versions.registry import ModelVersions


class CallServer(Protocol):
    """A server of calls beside HTTP (service/web/grpc_server.py, GrpcServer): stopped first when the worker stops."""

    def stop(self, grace_s: float) -> Callable[[float | None], bool]:
        """Refuse new calls now and end the ones in flight within `grace_s`; returns a wait for that."""


@dataclass
class ModelServer:
    """One worker's model versions, its batcher and result cache (None when off).

    `ready` is true between warm-up and shutdown. The batcher is the worker's, whatever the
    version: each queued request names the version that runs it (service/backends/base.py, ModelInputs).
    """

    settings: Settings
    versions: ModelVersions
    batcher: Batcher
    cache: ResultCache | None = None
    jobs: Jobs | None = None
    grpc: CallServer | None = None  # started in the worker after the app (service/web/grpc_server.py)
    poller: VersionPoller | None = None  # with MODEL_BASE_PATH: new versions without a restart
    ready: bool = False
    refusals: RefusalSummary = field(default_factory=RefusalSummary)
    _caches: dict = field(default_factory=dict, repr=False)

    @property
    def model(self) -> ServedModel:
        """The version requests naming none are served by: the latest available."""
        return self.versions.latest()

    def model_for(self, name: str | None, version: int | None, label: str | None = None) -> ServedModel:
        """The version of the served model that `name` and `version` or `label` (neither: the latest) designate.

        NotFound saying what is served, for another model or a version not available.
        """
        self.check_name(name)
        return self.versions.serving(version, label)

    @contextmanager
    def lease(self, name: str | None, version: int | None, label: str | None = None) -> Iterator[ServedModel]:
        """`model_for`'s version, kept from being released until the request that leased it is answered."""
        self.check_name(name)
        with self.versions.lease(version, label) as model:
            yield model

    def cache_for(self, model: ServedModel) -> ResultCache | None:
        """The result cache's view for one version: the answers of no other version are read or written."""
        if self.cache is None:
            return None
        key = (model.name, model.version, model.path)
        if key not in self._caches:
            self._caches[key] = self.cache.for_model(identity_of(model, self.settings.model_path))
        return self._caches[key]

    def forget_cache(self, version: int) -> None:
        """Drop the cache's view of a released version (its answers age out of the tiers)."""
        self._caches = {key: view for key, view in self._caches.items() if key[1] != version}

    def check_name(self, name: str | None) -> None:
        """NotFound unless `name` (None: any) is the served model's."""
        if name is not None and name != self.versions.name:
            raise NotFound(f"model {name!r} is not served here; this server serves {self.versions.name!r}")

    def close(self) -> bool:
        """Stop taking requests and answer every accepted one; True if done within the graceful timeout."""
        if self.poller is not None:
            self.poller.stop(self.settings.graceful_timeout_s)
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
