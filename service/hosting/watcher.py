"""A worker's models kept in line with its model config file or repository, and with the repository APIs.

Every MODEL_CONFIG_POLL_S the worker reads the configuration again (TF Serving's config file
polling, Triton's POLL mode) and compares each model's settings with those it serves with: a
new model is loaded beside the others and then routed to; a removed one is no longer routed to,
answers the requests it took, and is let go of; one whose settings changed is loaded anew and
replaces the old one without a gap. **A model that did not change is not touched.** A model
that fails to load is reported (`ModelServer.unavailable`, the repository index) with its
error, and tried again once its files or settings change; a changed one that fails keeps its
old self serving. A configuration that does not parse changes nothing.

The APIs (Triton's load and unload, TF Serving's HandleReloadConfigRequest) reach one worker:
it records the change for all (service/hosting/control.py) and applies it before answering;
the other workers apply it at their next look, every MODEL_CONFIG_POLL_S (MODEL_POLL_S when
that is 0). A model unloaded through the API stays unloaded, whatever the files say, until it is
loaded through the API again.

With a budget for models (MODEL_MEMORY_MB, or the plan's), a model not loaded is loaded for
its first request, within the budget and the loads' share of the worker (residency.py).
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass

from service.backends.footprint import measure_footprint
from service.catalog import config_file_stamp, read_models
from service.errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from service.hosting.builder import ModelHosting
from service.hosting.control import ControlFile, ControlRecord
from service.hosting.residency import LoadedModel, LoadRation, models_to_unload
from service.pipeline.model_server import HostedModel, ModelServer
from service.settings import Settings, SettingsError
from service.telemetry import metrics
from service.threads import Completion, OsThread, lower_this_thread, new_completion, new_lock, new_queue
from service.version_policy import LayoutError, VersionPolicy
from service.versions.layout import files_stamp, find_versions
from service.versions.poller import LOADING_NICENESS

log = logging.getLogger(__name__)

_STOP = object()
LOAD_SHARE = 0.25  # of a worker's time, at most, that loads on demand take (residency.py, LoadRation)


@dataclass(frozen=True)
class _Failure:
    """A model that did not load: what it was tried with, and why it failed."""

    settings: Settings
    files: tuple
    error: str


@dataclass(frozen=True)
class _Call:
    """An API call's look, handed to the watcher's thread: `done` when it has looked."""

    done: Completion
    retry_failed: bool  # the models that failed are tried again, changed or not


class CatalogWatcher:
    """Changes the models `server` serves as its configuration and the repository APIs say; one change at a time.

    `configured` is what the master read at start, served until the files read well. Changes are
    made in one OS thread, the watcher's (`start`); an API call hands its change to it and waits
    (under gevent too).
    """

    def __init__(
        self,
        server: ModelServer,
        hosting: ModelHosting,
        control: ControlFile,
        configured: tuple[Settings, ...],
        budget_bytes: int | None = None,
    ):
        self._server = server
        self._settings = server.settings
        self._hosting = hosting
        self._control = control
        self._configured = {model.served_model_name: model for model in configured}
        self._failed: dict[str, _Failure] = {}
        self._applied = ControlRecord()  # what the worker started with: a record made since is applied
        self._calls = new_queue()
        self._thread: OsThread | None = None
        self._budget_bytes = budget_bytes
        self._size_of = measured_size
        self._measured: dict[tuple, int] = {}  # (settings, files) -> bytes: each model measured once as it is
        self._sizes: dict[str, int] = {}  # with a budget: each loaded model's measured footprint
        self._ration = LoadRation(LOAD_SHARE)
        self._ration_lock = new_lock()  # OS-level, held for a few statements, never across a wait
        self._waiters: dict[str, list[Completion]] = {}  # models loading on demand: the requests waiting

    @property
    def loads_on_demand(self) -> bool:
        return self._budget_bytes is not None

    # In the watcher's thread

    def look(self, read_files: bool = True, starting: bool = False) -> None:
        """Bring the models served in line with the configuration (read again if `read_files`) and the record.

        `starting`: the worker takes no request yet, and its models load at full speed.
        """
        record = self._control.read()
        if read_files or record != self._applied:
            self._configured = self._read(record)
        self._applied = record
        wanted = self._wanted(record)
        served = self._server.models
        removed = [name for name in served if name not in wanted]
        if removed:
            self._route(wanted)
        for name in removed:
            log.info("model %s is unloaded or no longer configured: let go once its requests are answered", name)
            self._hosting.let_go(served[name])
            self._sizes.pop(name, None)
        for name in [name for name in self._failed if name not in wanted]:
            del self._failed[name]
        for name, settings in wanted.items():
            current = self._server.models.get(name)
            if current is not None and current.settings != settings:
                self._bring_in(name, settings, wanted, current, starting)
            elif current is None and (not self.loads_on_demand or (starting and self._fits(settings))):
                self._bring_in(name, settings, wanted, current, starting)  # on demand: the first to fit, at start
        self._server.unavailable = self._unavailable(record)

    def _unavailable(self, record: ControlRecord) -> dict[str, str]:
        """The configured models not served, each with why: unloaded on request, or its load's error."""
        unavailable = {}
        for name in self._configured:
            if name in record.unloaded:
                unavailable[name] = "unloaded through the repository API"
            elif name not in self._server.models and name in self._failed:
                unavailable[name] = self._failed[name].error
            elif name not in self._server.models and self.loads_on_demand:
                unavailable[name] = "not loaded: it loads on its first request (MODEL_MEMORY_MB)"
        return unavailable

    def _read(self, record: ControlRecord) -> dict[str, Settings]:
        """The configured models: the config given over gRPC while MODEL_CONFIG_FILE stays as it was, else the files."""
        given = record.config_text is not None and record.config_file_stamp == config_file_stamp(self._settings)
        try:
            models = read_models(self._settings, record.config_text if given else None)
        except SettingsError as error:
            log.warning("%s; serving %s as they are meanwhile", error, sorted(self._server.models) or "no model")
            return self._configured
        return {model.served_model_name: model for model in models}

    def _bring_in(
        self, name: str, settings: Settings, wanted: dict, current: HostedModel | None, starting: bool = False
    ) -> None:
        files = _files_of(settings)
        failed = self._failed.get(name)
        if failed is not None and (failed.settings, failed.files) == (settings, files):
            return  # it failed as it is: tried again once its files or settings change
        verb = "loading" if current is None else "loading anew (its settings changed)"
        if not starting:
            log.info("model %s is configured: %s it beside the models serving", name, verb)
        try:
            hosted = self._hosting.host(settings, beside_others=not starting)
        except Exception as error:  # whatever it is, it is this model's: the others serve on
            self._failed[name] = _Failure(settings, files, str(error))
            if current is None:
                self._server.unavailable = {**self._server.unavailable, name: str(error)}
            log.error("model %s does not load%s: %s", name, "" if current is None else "; its old self serves", error)
            return
        self._failed.pop(name, None)
        if self.loads_on_demand:
            self._sizes[name] = self._size(settings)
        self._route(wanted, {name: hosted})
        self._hosting.serve(hosted)
        if not starting:
            log.info("model %s serves", name)
        if current is not None:
            self._hosting.let_go(current)
        metrics.models_loaded_bytes.set(sum(self._sizes.values()))

    def _route(self, wanted: dict, new: dict[str, HostedModel] | None = None) -> None:
        """Route to the models wanted that serve, in the configured order; a request reads `models` once."""
        serving = {**self._server.models, **(new or {})}
        self._server.models = {name: serving[name] for name in wanted if name in serving}

    def _fits(self, settings: Settings) -> bool:
        return sum(self._sizes.values()) + self._size(settings) <= self._budget_bytes

    def _size(self, settings: Settings) -> int:
        """A model's measured footprint, measured again only once its settings or files change."""
        key = (settings, _files_of(settings))
        if key not in self._measured:
            self._measured[key] = self._size_of(settings)
        return self._measured[key]

    def _wanted(self, record: ControlRecord) -> dict[str, Settings]:
        """The configured models not unloaded through the API, in the configured order."""
        return {name: model for name, model in self._configured.items() if name not in record.unloaded}

    def _load_on_demand(self, name: str) -> None:
        """Load model `name` for a request, unloading the least recently used idle models to make room.

        ServiceUnavailable when the models with requests in flight leave no room: they are never
        unloaded. A model that failed to load, and whose files have not changed, is not tried.
        The model loaded is `awaited` until its request takes it: the next load does not unload it.
        """
        settings = self._configured.get(name)
        if name in self._server.models or settings is None or name in self._applied.unloaded:
            return
        needed_bytes = self._size(settings)
        loaded = [
            LoadedModel(
                other, self._sizes.get(other, 0), hosted.last_used_s, hosted.versions.in_flight() + hosted.awaited
            )
            for other, hosted in self._server.models.items()
        ]
        unload = models_to_unload(self._budget_bytes, needed_bytes, loaded)
        if unload is None:
            raise ServiceUnavailable(
                f"model {name!r} needs {needed_bytes / 2**20:.0f} MiB, and the models with requests in flight "
                f"hold the rest of this worker's {self._budget_bytes / 2**20:.0f} MiB for models "
                "(MODEL_MEMORY_MB); retry shortly",
                reason="models_busy",
            )
        started = time.monotonic()
        for victim in unload:
            hosted = self._server.models[victim]
            self._server.models = {other: model for other, model in self._server.models.items() if other != victim}
            log.info("model %s is unloaded to make room for %s (least recently used, idle)", victim, name)
            self._hosting.let_go(hosted)
            self._sizes.pop(victim, None)
            metrics.on_demand_evictions.labels(victim).inc()
        wanted = self._wanted(self._applied)
        self._bring_in(name, settings, wanted, None)
        with self._ration_lock:
            self._ration.loaded(time.monotonic() - started)
        if name in self._server.models:
            self._server.models[name].awaited = True
            metrics.on_demand_loads.labels(name).inc()
        self._server.unavailable = self._unavailable(self._applied)

    # Any thread: the watcher's loop and the API calls handed to it

    def would_bring(self, name: str) -> bool:
        """Whether model `name` would be loaded for a request: on demand, configured, not unloaded, and not failed
        as its files are now (a load that failed is tried again once they change)."""
        if not self.loads_on_demand or name not in self._configured or name in self._applied.unloaded:
            return False
        failed = self._failed.get(name)
        return failed is None or (failed.settings, failed.files) != (self._configured[name], _files_of(failed.settings))

    def bring(self, name: str) -> HostedModel | None:
        """With a budget: model `name` loaded for the calling request, which waits; None when it is not to be
        loaded on demand (none is, it is not configured, or it was unloaded through the API or failed to load).

        ServiceUnavailable, with when to retry, while loads already take their share of the worker's
        time (`LoadRation`), or when the models in use leave no room.
        """
        if not self.would_bring(name):
            return None
        waiter = new_completion()
        with self._ration_lock:  # the requests for a model that is loading wait for that one load
            if (hosted := self._server.models.get(name)) is not None:
                return hosted
            first = name not in self._waiters
            if first:
                retry_after_s = self._ration.admit()
                if retry_after_s:
                    raise ServiceUnavailable(
                        f"model {name!r} is not loaded, and loads of models on demand already take "
                        f"{LOAD_SHARE:.0%} of this worker's time; retry in {retry_after_s:.1f} s",
                        retry_after_s,
                        reason="loads_rationed",
                    )
            self._waiters.setdefault(name, []).append(waiter)
        if first and self._thread is not None:
            self._calls.put(name)
        elif first:  # the watcher does not run (tests): load here
            self._load_for_waiters(name)
        waiter.wait()
        hosted = self._server.models.get(name)
        if hosted is None and name in self._configured and name not in self._failed:
            raise ServiceUnavailable(
                f"model {name!r} was unloaded again to make room before its request could run; retry shortly",
                reason="models_busy",
            )
        return hosted

    def _load_for_waiters(self, name: str) -> None:
        """`_load_on_demand`, then every request waiting for `name` is woken (with the error, if it failed)."""
        error = None
        try:
            self._load_on_demand(name)
        except Exception as raised:
            error = raised
            if not isinstance(raised, ServiceUnavailable):
                log.exception("loading model %s on demand failed", name)
        with self._ration_lock:
            waiters = self._waiters.pop(name, [])
        for waiter in waiters:
            if error is None:
                waiter.resolve(None)
            else:
                waiter.fail(error)

    def start(self, interval_s: float, read_files: bool) -> None:
        """Look every `interval_s` in an OS thread at the lowest priority, reading the files again if `read_files`."""

        def run():
            lower_this_thread(LOADING_NICENESS)
            while True:
                try:
                    call = self._calls.get(timeout=interval_s)
                except queue.Empty:
                    call = None
                if call is _STOP:
                    return
                if isinstance(call, str):  # a model to load on demand
                    self._load_for_waiters(call)
                    continue
                if call is not None and call.retry_failed:
                    self._failed.clear()  # the API asks for one more try of each
                try:
                    self.look(read_files=read_files or call is not None)
                except Exception as error:
                    log.exception("changing the models served failed; trying again")
                    if call is not None:
                        call.done.fail(error)
                        continue
                if call is not None:
                    call.done.resolve(None)

        self._thread = OsThread(run, "model-watcher")

    def stop(self, timeout_s: float) -> bool:
        """Stop looking; True once a change under way has ended within `timeout_s`. Calls then look in their thread."""
        if self._thread is None:
            return True
        self._calls.put(_STOP)
        stopped = self._thread.join(timeout_s)
        self._thread = None
        return stopped

    def _look_now(self, retry_failed: bool) -> None:
        """A look by the watcher's thread, waited for."""
        self._hand_over(_Call(new_completion(), retry_failed))

    def _hand_over(self, call: _Call) -> None:
        """`call` done by the watcher's thread, waited for; in this thread when the watcher does not run (tests)."""
        if self._thread is None:
            if call.retry_failed:
                self._failed.clear()
            self.look()
            return
        self._calls.put(call)
        call.done.wait()

    def load(self, name: str) -> None:
        if name not in self._configured_now():
            served = ", ".join(repr(model) for model in self._configured) or "no model"
            raise NotFound(f"model {name!r} is not in the model repository; it holds {served}")
        self._control.change(load=name)
        self._look_now(retry_failed=True)
        if name not in self._server.models:
            raise Conflict(f"model {name!r} does not load: {self._server.unavailable.get(name, 'see the log')}")

    def unload(self, name: str) -> None:
        if name not in self._server.models and name not in self._server.unavailable:
            served = ", ".join(repr(model) for model in self._server.models) or "no model"
            raise NotFound(f"model {name!r} is not served here; this server serves {served}")
        self._control.change(unload=name)
        self._look_now(retry_failed=False)

    def reload_config(self, config_text: str) -> None:
        if not self._settings.model_config_file:
            raise Conflict("this server reads no MODEL_CONFIG_FILE: use the repository's load and unload instead")
        try:
            models = read_models(self._settings, config_text)
        except SettingsError as error:
            raise BadRequest(str(error)) from None
        self._control.change(config=(config_text, config_file_stamp(self._settings)))
        self._look_now(retry_failed=True)
        failed = {model.served_model_name for model in models} - set(self._server.models)
        if failed:
            unavailable = self._server.unavailable
            reasons = "; ".join(f"{name}: {unavailable.get(name, 'see the log')}" for name in sorted(failed))
            raise Conflict(f"the config is applied, but {len(failed)} of its models do not load ({reasons})")

    def _configured_now(self) -> dict[str, Settings]:
        return self._read(self._control.read())


def _files_of(settings: Settings) -> tuple:
    """What a model's files are now: a change means a model that failed may load."""
    try:
        if not settings.model_base_path:
            return (files_stamp(settings.model_path),)
        found = find_versions(settings.model_base_path)
        return tuple((number, files_stamp(path)) for number, path in sorted(found.items()))
    except (LayoutError, OSError):
        return ()


def measured_size(settings: Settings) -> int:
    """A model's measured footprint (bytes): its newest version the policy selects, as the planner measured it
    (cached), else measured now in a child process; 0 when it cannot be (its load will say why)."""
    try:
        found = find_versions(settings.model_base_path)
        wanted = VersionPolicy.parse(settings.model_version_policy).select(found)
        path = found[max(wanted)]
        return measure_footprint(
            path, settings.padded_batch_sizes(), settings.footprint_cache, settings.model_backend
        ).model_bytes
    except Exception as error:  # whatever stops the measurement stops the load too, which says why
        log.warning("could not measure model %s: %s", settings.served_model_name, error)
        return 0
