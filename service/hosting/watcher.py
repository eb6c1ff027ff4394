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
the other workers apply it at their next look, every MODEL_POLL_S. A model unloaded through the
API stays unloaded, whatever the files say, until it is loaded through the API again.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass

from service.catalog import config_file_stamp, read_models
from service.errors import BadRequest, Conflict, NotFound
from service.hosting.builder import ModelHosting
from service.hosting.control import ControlFile, ControlRecord
from service.pipeline.model_server import HostedModel, ModelServer
from service.settings import Settings, SettingsError
from service.threads import Completion, OsThread, lower_this_thread, new_completion, new_queue
from service.version_policy import LayoutError
from service.versions.layout import files_stamp, find_versions
from service.versions.poller import LOADING_NICENESS

log = logging.getLogger(__name__)

_STOP = object()


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

    # In the watcher's thread

    def look(self, read_files: bool = True, starting: bool = False) -> None:
        """Bring the models served in line with the configuration (read again if `read_files`) and the record.

        `starting`: the worker takes no request yet, and its models load at full speed.
        """
        record = self._control.read()
        if read_files or record != self._applied:
            self._configured = self._read(record)
        self._applied = record
        wanted = {name: model for name, model in self._configured.items() if name not in record.unloaded}
        served = self._server.models
        removed = [name for name in served if name not in wanted]
        if removed:
            self._route(wanted)
        for name in removed:
            log.info("model %s is unloaded or no longer configured: let go once its requests are answered", name)
            self._hosting.let_go(served[name])
        for name in [name for name in self._failed if name not in wanted]:
            del self._failed[name]
        for name, settings in wanted.items():
            current = self._server.models.get(name)
            if current is None or current.settings != settings:
                self._bring_in(name, settings, wanted, current, starting)
        self._server.unavailable = self._unavailable(record)

    def _unavailable(self, record: ControlRecord) -> dict[str, str]:
        """The configured models not served, each with why: unloaded on request, or its load's error."""
        unavailable = {}
        for name in self._configured:
            if name in record.unloaded:
                unavailable[name] = "unloaded through the repository API"
            elif name not in self._server.models and name in self._failed:
                unavailable[name] = self._failed[name].error
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
        self._route(wanted, {name: hosted})
        self._hosting.serve(hosted)
        if not starting:
            log.info("model %s serves", name)
        if current is not None:
            self._hosting.let_go(current)

    def _route(self, wanted: dict, new: dict[str, HostedModel] | None = None) -> None:
        """Route to the models wanted that serve, in the configured order; a request reads `models` once."""
        serving = {**self._server.models, **(new or {})}
        self._server.models = {name: serving[name] for name in wanted if name in serving}

    # Any thread: the watcher's loop and the API calls handed to it

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
        """A look by the watcher's thread, waited for; in this thread when the watcher does not run (tests)."""
        if self._thread is None:
            if retry_failed:
                self._failed.clear()
            self.look()
            return
        call = _Call(new_completion(), retry_failed)
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
