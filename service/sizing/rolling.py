"""SIGHUP: read the reloadable settings again, then replace the workers one at a time.

Gunicorn's own SIGHUP runs the configuration file again, forks every new worker and stops every
old one at once. Here that would cost the service its workers while the new ones import the
runtime and warm up (nobody accepts meanwhile), stop it for good when nothing on disk loads any
more (the old workers served from memory), and end the master when the file fails (a broken
newest version measured again). So the master's SIGHUP handler is replaced (`reload_on_hangup`):

1. The settings are read again (`service.settings.reload_settings`). One that does not parse or
   validate is logged and the SIGHUP changes nothing; a setting that is not reloadable keeps its value.
2. For each worker, oldest first: a new one is forked with the new settings, in the old one's slot;
   once it serves (service/sizing/readiness.py), the old one is stopped gracefully (it answers what
   it accepted). A new worker that cannot load its app, exits, or does not serve within
   `READY_BOUND_RATIO` times the slowest boot of the workers it replaces (at least
   GRACEFUL_TIMEOUT_S) is stopped, and the roll ends there: the old workers left keep serving. So
   memory holds one worker more than the plan, never twice the workers.

The master's loop is held while a new worker boots, as Gunicorn's own reload holds it; workers are
reaped and their heartbeats checked meanwhile, and a signal that arrives then is handled after.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import time
from functools import partial

from service.settings import SettingsError, current_settings, reload_settings, use_settings
from service.sizing import readiness

READY_BOUND_RATIO = 5  # a new worker may take this many times the slowest boot of the workers it replaces
CHECK_INTERVAL_S = 0.05  # how often the master looks at a booting worker (it holds the master's loop)
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def reload_on_hangup(server) -> None:
    """on_starting: make the arbiter's SIGHUP handler `roll` (Gunicorn calls `handle_<signal>` of the arbiter)."""
    server.handle_hup = partial(roll, server)


def roll(server) -> int:
    """Reload the settings, then replace the workers one at a time; how many were replaced."""
    server.log.info("SIGHUP: reading the settings again, then replacing the workers one at a time")
    try:
        settings, ignored = reload_settings(current_settings())
    except SettingsError as error:
        server.log.error("SIGHUP changes nothing: %s; the workers keep the settings they have", error)
        return 0
    if ignored:
        server.log.warning("SIGHUP: %s changed, but take a restart; they keep their values", ", ".join(ignored))
    use_settings(settings)
    old_workers = sorted(server.WORKERS.values(), key=lambda worker: worker.age)
    boots = [worker.boot_s for worker in old_workers if readiness.is_ready(worker)]
    # A boot is slower on a busy machine; a small model's, mostly imports, varies the most.
    bound_s = max(READY_BOUND_RATIO * max(boots, default=0), settings.graceful_timeout_s)
    replaced, held_signals = 0, []
    try:
        for old in old_workers:
            if old.pid not in server.WORKERS:
                continue  # it died meanwhile: Gunicorn replaces it with the new settings anyway
            server.slot_for_next_worker = getattr(old, "slot", None)
            new_pid = server.spawn_worker()
            outcome = _wait_until_serving(server, new_pid, bound_s, held_signals)
            if outcome != "serving":
                serving = [w for w in old_workers if w.pid in server.WORKERS and readiness.is_ready(w)]
                server.log.error(
                    "SIGHUP: the new worker (pid %s) %s; the roll stops here, and the %d old workers serving keep "
                    "the settings they had (the new worker's log says why)",
                    new_pid, outcome, len(serving),
                )  # fmt: skip
                _stop(server, new_pid, settings.graceful_timeout_s)
                break
            server.kill_worker(old.pid, signal.SIGTERM)  # it answers what it accepted, then exits
            replaced += 1
    finally:
        server.slot_for_next_worker = None
        for sig in held_signals:
            server.SIG_QUEUE.put_nowait(sig)
    server.log.info("SIGHUP: %d of %d workers replaced", replaced, len(old_workers))
    return replaced


def _stop(server, pid: int, timeout_s: float) -> None:
    """Stop the worker `pid` and wait until it is reaped (SIGKILL after `timeout_s`).

    Not just signalled: while it is among the workers, the master's next look at their number would
    stop the oldest one over the count, a worker that serves.
    """
    deadline = time.monotonic() + timeout_s
    if pid in server.WORKERS:
        server.kill_worker(pid, signal.SIGTERM)
    while pid in server.WORKERS:
        if time.monotonic() > deadline:
            server.kill_worker(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(CHECK_INTERVAL_S)
        server.reap_workers()


def _wait_until_serving(server, pid: int, bound_s: float, held_signals: list[int]) -> str:
    """`serving`, or what kept the worker `pid` from it, within `bound_s`; signals that arrive are held."""
    deadline = time.monotonic() + bound_s
    while True:
        worker = server.WORKERS.get(pid)
        if worker is None:
            return "exited before it served"
        if readiness.is_ready(worker):
            return "serving"
        if readiness.has_failed(worker):
            return "could not load its app"
        if any(sig in STOPPING_SIGNALS for sig in held_signals):
            return "was not waited for: the master is stopping"
        if time.monotonic() > deadline:
            return f"did not serve within {bound_s:.0f} s"
        with contextlib.suppress(queue.Empty):
            held_signals.append(server.SIG_QUEUE.get(timeout=CHECK_INTERVAL_S))
        server.reap_workers()
        server.murder_workers()
