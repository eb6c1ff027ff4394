"""The bodies of the Gunicorn hooks in gunicorn.conf.py: plan in the master, place each worker.

The master runs `configure_master` and `assign_slot`; neither imports TensorFlow or touches
CUDA, since neither survives `fork()`. A worker learns its placement in `post_fork` (before the
app, and so TensorFlow, is imported), says when it serves (service/sizing/readiness.py) and
drains its batcher in `worker_exit`. The master also owns the directory of the workers' metric
files: it empties it at start and forgets each dead worker's live gauges in `child_exit`. Its
SIGHUP is service/sizing/rolling.py's.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

from service.backends import backend_for
from service.backends.footprint import Footprint, FootprintError, measure_footprint
from service.catalog import served_models, serves_catalog
from service.settings import Settings, SettingsError, load_settings, use_settings
from service.sizing import readiness
from service.sizing.gpu import discover_gpus, pin_visible_gpu
from service.sizing.machine import detect_machine
from service.sizing.placement import place_this_worker
from service.sizing.planner import WorkerPlan, plan_workers
from service.version_policy import LayoutError, VersionPolicy
from service.versions.layout import find_versions

log = logging.getLogger(__name__)


class CannotStart(SystemExit):
    """A configuration mistake found at start: the master exits with its one line, without a traceback."""

    def __init__(self, reason: str):
        super().__init__(f"tf-model-server cannot start: {reason}")


def configure_master() -> tuple[Settings, WorkerPlan]:
    """gunicorn.conf.py, in the master at start: the settings and the plan, or CannotStart saying what to fix.

    The settings become the master's, which every worker inherits (SIGHUP then changes them).
    """
    try:
        settings = load_settings()
        plan = plan_for_this_machine(settings)
    except (SettingsError, LayoutError, FootprintError) as error:
        raise CannotStart(str(error)) from None
    use_settings(settings)
    return settings, plan


def plan_for_this_machine(settings: Settings) -> WorkerPlan:
    """Measure (or read from cache) the served models' footprints, find GPUs, and plan the workers.

    Every worker serves every model: its footprint is theirs together (`Footprint.together`). With
    a base path a model's footprint is that of the version the workers will serve: the highest
    the policy selects, or, when it does not load, the newest older one that does. The master
    refuses to start when MODEL_PATH cannot be read or nothing in a model's base path loads; with
    a model config or repository, when none of its models loads (the others are planned for).
    """
    models = served_models(settings)
    if len(models) == 1 and not serves_catalog(settings):
        return plan_workers(settings, detect_machine(), _measured(settings)[1], discover_gpus())
    measured, failures = [], []
    for model in models:
        try:
            measured.append((model.served_model_name, *_measured(model)))
        except (FootprintError, LayoutError) as error:  # the workers report it too, and serve the others
            failures.append(f"{model.served_model_name}: {error}")
            log.warning("model %s is left out of the plan, as it does not load: %s", model.served_model_name, error)
    if not measured:
        raise FootprintError(f"no configured model loads ({'; '.join(failures)})")
    if len(measured) == 1:
        return plan_workers(settings, detect_machine(), measured[0][2], discover_gpus())
    footprint = Footprint.together([(runtime, footprint) for _, runtime, footprint in measured])
    each = tuple((name, footprint) for name, _, footprint in measured)
    return plan_workers(settings, detect_machine(), footprint, discover_gpus(), each)


def footprint_to_plan_for(settings: Settings) -> Footprint:
    """The footprint of the model the workers will serve; LayoutError or FootprintError naming the setting."""
    return _measured(settings)[1]


def _measured(settings: Settings) -> tuple[str, Footprint]:
    """(the runtime of the version measured, its footprint): MODEL_PATH's, or the base path's newest that loads."""

    def measure(path: str) -> tuple[str, Footprint]:
        footprint = measure_footprint(
            path, settings.padded_batch_sizes(), settings.footprint_cache, settings.model_backend
        )
        return backend_for(path, settings.model_backend).name, footprint

    if not settings.model_base_path:
        check_readable("MODEL_PATH", settings.model_path)
        try:
            return measure(settings.model_path)
        except FootprintError as error:
            raise FootprintError(f"MODEL_PATH={error}", error.output) from None
    failures = []
    for path in models_to_plan_for(settings):
        try:
            return measure(path)
        except (FootprintError, OSError) as error:  # OSError: removed while we looked
            failures.append(str(error))
    raise FootprintError(f"MODEL_BASE_PATH={settings.model_base_path!r}: no version loads: {'; '.join(failures)}")


def models_to_plan_for(settings: Settings) -> list[str]:
    """The versions of MODEL_BASE_PATH the workers would load, in the order they try them; LayoutError when none."""
    found = find_versions(settings.model_base_path)
    policy = VersionPolicy.parse(settings.model_version_policy)
    wanted = policy.select(found)
    if not wanted:
        raise LayoutError(
            f"MODEL_BASE_PATH={settings.model_base_path!r} has no version directory that "
            f"MODEL_VERSION_POLICY={settings.model_version_policy} serves (found: {sorted(found) or 'none'})"
        )
    return [found[number] for number in [max(wanted), *policy.fallbacks(found)]]


def check_readable(setting: str, path: str) -> None:
    """LayoutError saying which setting names a path that is missing or that this user cannot read."""
    if not os.path.exists(path):
        raise LayoutError(f"{setting}={path!r} does not exist (build the demo model with `make demo-model`)")
    if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
        raise LayoutError(f"{setting}={path!r} cannot be read by this user (uid {os.getuid()})")


def prepare_metrics_dir(settings: Settings) -> Path:
    """Empty (or create) METRICS_DIR and point prometheus_client at it, in the master.

    Must run before anything in the process imports prometheus_client: its multiprocess
    mode is chosen at import. Files left by an earlier run would be summed with this one's.
    """
    if settings.metrics_dir:
        path = Path(settings.metrics_dir)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="model-server-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    # Imported here, before fork and before gevent patches `threading`, so its locks are OS
    # locks: a gevent worker's greenlets and its batcher's OS thread both update metrics.
    import prometheus_client  # noqa: F401

    return path


def remove_metrics_dir(settings: Settings, path: Path) -> None:
    """on_exit: delete the temporary metrics directory (a configured METRICS_DIR stays)."""
    if not settings.metrics_dir:
        shutil.rmtree(path, ignore_errors=True)


def forget_worker(server, worker) -> None:
    """child_exit: drop the dead worker's live gauges (queue depth, workers alive) from the sums, and its pipe."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    readiness.forget(server, worker)


def assign_slot(server, worker) -> None:
    """pre_fork: give the new worker the lowest slot no live worker holds (at a SIGHUP, that of the one it replaces).

    `worker.age` only grows, so a replacement for a dead worker would otherwise land on a
    new GPU index; slots are reused, so it takes the dead worker's GPU.
    """
    chosen = getattr(server, "slot_for_next_worker", None)
    taken = {getattr(live, "slot", None) for live in server.WORKERS.values()}
    worker.slot = chosen if chosen is not None else next(slot for slot in range(len(taken) + 1) if slot not in taken)


def watch_worker(server, worker) -> None:
    """pre_fork: a pipe for the worker to say when it serves, and whether others serve while it boots.

    A worker that fails to load while others serve must not stop them: it steps aside and is
    replaced (service/web/workers.py, `load_app`); at the first start a failure stops the service.
    """
    readiness.watch(worker)
    worker.others_serve = any(readiness.is_ready(live) for live in server.WORKERS.values())
    worker.failed_boots = readiness.failed_boots_in_a_row(server)  # a longer pause after each


def place_worker(plan: WorkerPlan, server, worker) -> None:
    """post_fork, in the worker: record its placement and pin its GPU before TensorFlow loads.

    Until the worker sets its own signal handlers (Gunicorn's `init_signals`, after gevent has patched
    the standard library), it has the master's, which only queue a signal in the master's queue, here
    a copy nobody reads: a SIGTERM then was lost, and the master waited GRACEFUL_TIMEOUT_S for a worker
    that never heard it. A worker still booting has accepted nothing: SIGTERM ends it at once.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if getattr(worker, "ready_pipe", None):
        readiness.keep_own_end(server, worker)
    placement = plan.placement(worker.slot)
    place_this_worker(placement)
    pin_visible_gpu(placement.gpu.uuid if placement.gpu else None)


def check_grpc_port(settings: Settings) -> None:
    """on_starting, in the master: refuse to start when another process already listens on GRPC_PORT.

    The workers bind it with SO_REUSEPORT, which would let them share it silently with any
    process of the same user that did too (another instance of this service): each would get
    a share of the other's calls. A bind without SO_REUSEPORT fails while anything listens.
    """
    if not settings.grpc_port:
        return
    probe = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a connection in TIME_WAIT is no listener
    try:
        probe.bind((settings.host, settings.grpc_port))
    except OSError as error:
        raise CannotStart(f"GRPC_PORT={settings.grpc_port} on {settings.host} cannot be bound: {error}") from None
    finally:
        probe.close()


def drain_worker(worker) -> None:
    """worker_exit: answer every request already accepted before the process ends."""
    app = getattr(worker, "wsgi", None)
    server = getattr(app, "extensions", {}).get("model_server") if app is not None else None
    if server is not None:
        server.close()
