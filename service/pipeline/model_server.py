"""What one worker serves with: its settings, model versions and batcher, shared by every protocol."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
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
from service.telemetry import metrics
from service.telemetry.refusals import RefusalSummary
from service.versions.poller import VersionPoller
from service.versions.registry import ModelVersions


class CallServer(Protocol):
    """A server of calls beside HTTP (service/web/grpc_server.py, GrpcServer): stopped first when the worker stops."""

    def stop(self, grace_s: float) -> Callable[[float | None], bool]:
        """Refuse new calls now and end the ones in flight within `grace_s`; returns a wait for that."""


class Repository(Protocol):
    """The models' repository as an API (service/hosting/watcher.py, CatalogWatcher): served models come and go."""

    loads_on_demand: bool  # a model not loaded is loaded for its first request (MODEL_MEMORY_MB)

    def bring(self, name: str) -> HostedModel | None:
        """Model `name` loaded for a request, which waits; None when it is not one to load; ServiceUnavailable."""

    def would_bring(self, name: str) -> bool:
        """Whether model `name`, not loaded now, would be loaded for a request (`bring`) rather than refused."""

    def load(self, name: str) -> None:
        """Serve model `name` as the configuration says now (again, if it changed); NotFound, Conflict."""

    def unload(self, name: str) -> None:
        """Stop serving model `name` once its requests are answered, in every worker; NotFound."""

    def reload_config(self, config_text: str) -> None:
        """Serve the models of a TF Serving model config, and only those; BadRequest, Conflict."""

    def stop(self, timeout_s: float) -> bool:
        """Stop changing the models served; True once a change under way has ended within `timeout_s`."""


@dataclass
class HostedModel:
    """One model a worker serves: its settings (the server's, with its own per-model ones: service/catalog.py),
    its versions, its batcher (its queue and batching policy), and with a base path the poller of its versions."""

    settings: Settings
    versions: ModelVersions
    batcher: Batcher
    poller: VersionPoller | None = None
    last_used_s: float = field(default_factory=time.monotonic)  # its last request's: the least recently used go
    awaited: bool = False  # loaded on demand for a request that has not taken it yet: not to be unloaded

    @property
    def name(self) -> str:
        return self.versions.name


@dataclass
class ModelServer:
    """One worker's models by name, its result cache (None when off), jobs and gRPC server.

    `models` is replaced, never changed in place, when models come and go (`repository`): a
    request reads it once. `unavailable` names the configured models that do not load, with why.
    `ready` is true between warm-up and shutdown. Each model's batcher is that model's, whatever
    the version: each queued request names the version that runs it (service/backends/base.py,
    ModelInputs). With several models their passes take turns (service/batching/turns.py).
    """

    settings: Settings
    models: dict[str, HostedModel]
    cache: ResultCache | None = None
    jobs: Jobs | None = None
    grpc: CallServer | None = None  # started in the worker after the app (service/web/grpc_server.py)
    repository: Repository | None = None  # with a model config file or repository
    unavailable: dict[str, str] = field(default_factory=dict)
    ready: bool = False
    refusals: RefusalSummary = field(default_factory=RefusalSummary)
    _caches: dict = field(default_factory=dict, repr=False)

    @property
    def sole(self) -> HostedModel | None:
        """The model, when the server serves one; None when it serves several."""
        return next(iter(self.models.values())) if len(self.models) == 1 else None

    def hosted(self, name: str | None, load: bool = True) -> HostedModel:
        """The model named `name` (None: the sole one); NotFound saying what is served.

        With MODEL_MEMORY_MB, a model configured but not loaded is loaded, and the caller waits
        (unless not `load`: a status asks what is, not for a load).
        """
        models = self.models
        model = (next(iter(models.values())) if len(models) == 1 else None) if name is None else models.get(name)
        repository = self.repository
        if repository is not None and repository.loads_on_demand and name is not None:
            if model is not None:
                metrics.on_demand_hits.labels(name).inc()
            elif load:
                model = repository.bring(name)
        if model is None:
            served = ", ".join(repr(served) for served in models) or "no model"
            what = f"model {name!r} is not served here" if name is not None else "a request must name its model"
            if name in self.unavailable:
                what = f"model {name!r} is not served: {self.unavailable[name]}"
            raise NotFound(f"{what}; this server serves {served}")
        model.last_used_s, model.awaited = time.monotonic(), False
        return model

    def loads_for_a_request(self, name: str) -> bool:
        """Whether model `name` is not loaded and would be for its first request (MODEL_MEMORY_MB): it is ready
        to serve, and a probe of it must not load it (a probe of each model would evict the others)."""
        repository = self.repository
        return repository is not None and name not in self.models and repository.would_bring(name)

    def model_for(self, name: str | None, version: int | None, label: str | None = None) -> ServedModel:
        """The version of model `name` that `version` or `label` (neither: the latest) designate.

        NotFound saying what is served, for a model not served or a version not available.
        """
        return self.hosted(name).versions.serving(version, label)

    @contextmanager
    def lease(self, name: str | None, version: int | None, label: str | None = None) -> Iterator[ServedModel]:
        """`model_for`'s version, kept from being released until the request that leased it is answered."""
        with self.lease_hosted(name, version, label) as (_, model):
            yield model

    @contextmanager
    def lease_hosted(
        self, name: str | None, version: int | None, label: str | None = None
    ) -> Iterator[tuple[HostedModel, ServedModel]]:
        """`lease`, with the model the version is of: its settings and batcher serve the request.

        A model let go of between its lookup and the lease (removed, replaced, unloaded to make
        room) is looked up once more, so the request goes to what serves that name now.
        """
        for attempt in (1, 2):
            hosted = self.hosted(name)
            with ExitStack() as held:
                try:
                    model = held.enter_context(hosted.versions.lease(version, label))
                except NotFound:
                    if attempt == 2 or self.models.get(hosted.name) is hosted:
                        raise
                    continue
                yield hosted, model
                return

    def settings_for(self, model: ServedModel) -> Settings:
        """The settings a version of a served model is served with: the server's, with the model's own.

        A request whose model was let go of while it ran (removed, unloaded) gets the server's.
        """
        hosted = self.models.get(model.name)
        return hosted.settings if hosted is not None else self.settings

    def batcher_for(self, name: str) -> Batcher:
        """The batcher of model `name` (a job's, a leased version's); NotFound when it is not served."""
        return self.hosted(name).batcher

    def cache_for(self, model: ServedModel) -> ResultCache | None:
        """The result cache's view for one version: the answers of no other version are read or written."""
        if self.cache is None:
            return None
        key = (model.name, model.version, model.path)
        if key not in self._caches:
            self._caches[key] = self.cache.for_model(identity_of(model, self.settings.model_path))
        return self._caches[key]

    def forget_cache(self, name: str, version: int) -> None:
        """Drop the cache's view of a released version (its answers age out of the tiers)."""
        self._caches = {key: view for key, view in self._caches.items() if key[:2] != (name, version)}

    def close(self) -> bool:
        """Stop taking requests and answer every accepted one; True if done within the graceful timeout."""
        if self.repository is not None:
            self.repository.stop(self.settings.graceful_timeout_s)
        for model in self.models.values():
            if model.poller is not None:
                model.poller.stop(self.settings.graceful_timeout_s)
        # gRPC first: it takes no new call from now on, and the calls it has taken are still admitted.
        grpc_stopped = self.grpc.stop(self.settings.graceful_timeout_s) if self.grpc is not None else None
        self.ready = False
        if self.jobs is not None:
            self.jobs.runner.stop()
        deadline = time.monotonic() + self.settings.graceful_timeout_s
        closed = all([model.batcher.close(max(0.0, deadline - time.monotonic())) for model in self.models.values()])
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
