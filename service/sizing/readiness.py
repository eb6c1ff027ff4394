"""Which workers serve: each worker tells the master through a pipe once its app is loaded and warmed up.

Gunicorn's master knows a worker's process, not whether its app has loaded: a worker spends its
first seconds importing the runtime and warming the model up. Two decisions need to know:
whether a new worker's failed load may stop the service (only when no other worker serves), and
when a worker replaced at a SIGHUP may stop (once its successor serves). Each worker gets a pipe
before it is forked (`watch`), keeps only its end (`keep_own_end`), and writes how long it took
to boot once it serves (`report_ready`), or that it cannot serve (`report_failed`); the master
reads it without blocking (`is_ready`, `has_failed`).
"""

from __future__ import annotations

import contextlib
import os
import time
from functools import partial


def watch(worker) -> None:
    """pre_fork, in the master: a pipe for the worker's report, and the time its boot starts."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    worker.ready_pipe = (read_end, write_end)
    worker.spawned_at = time.monotonic()  # the system's monotonic clock: the worker reads it too
    worker.boot_s = None  # how long it took to serve, once it has told
    worker.boot_failed = False  # it told it cannot serve
    worker.report_failure = partial(report_failed, worker)  # for its worker class, which imports nothing of this


def keep_own_end(server, worker) -> None:
    """post_fork, in the worker: close the master's end, and every end of its siblings' pipes it inherited."""
    for sibling in server.WORKERS.values():
        if sibling is not worker:
            _close(getattr(sibling, "ready_pipe", ()))
    _close(worker.ready_pipe[:1])


def report_ready(worker) -> None:
    """post_worker_init, in the worker: it serves; tell the master how long its boot took."""
    _report(worker, f"{time.monotonic() - worker.spawned_at:.3f}")


def report_failed(worker) -> None:
    """In the worker, when its app failed to load: tell the master now, before it steps aside."""
    _report(worker, FAILED)


def is_ready(worker) -> bool:
    """In the master: whether the worker has said it serves (its boot time is then `worker.boot_s`)."""
    _read_report(worker)
    return getattr(worker, "boot_s", None) is not None


def has_failed(worker) -> bool:
    """In the master: whether the worker has said its app cannot load."""
    _read_report(worker)
    return getattr(worker, "boot_failed", False)


FAILED = "failed"


def _report(worker, report: str) -> None:
    write_end = worker.ready_pipe[1]
    with contextlib.suppress(OSError):
        os.write(write_end, f"{report}\n".encode())
    _close((write_end,))


def _read_report(worker) -> None:
    pipe = getattr(worker, "ready_pipe", None)
    if not pipe or worker.boot_s is not None or worker.boot_failed:
        return  # not watched (a worker of another configuration), or already told
    try:
        report = os.read(pipe[0], 64).decode().strip()
    except (BlockingIOError, OSError):
        return
    if report == FAILED:
        worker.boot_failed = True
    else:
        with contextlib.suppress(ValueError):
            worker.boot_s = float(report)


def forget(server, worker) -> None:
    """child_exit, in the master: count a worker that ended before it served, and close its pipe."""
    if getattr(worker, "ready_pipe", None) and not is_ready(worker):
        server.failed_boots = failed_boots_in_a_row(server) + 1
        server.last_failed_age = worker.age
    _close(getattr(worker, "ready_pipe", ()))
    worker.ready_pipe = ()


def failed_boots_in_a_row(server) -> int:
    """In the master: how many workers ended before they served since a worker last came to serve."""
    last_failed_age = getattr(server, "last_failed_age", 0)
    if any(is_ready(live) and live.age > last_failed_age for live in server.WORKERS.values()):
        server.failed_boots = 0
    return getattr(server, "failed_boots", 0)


def _close(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
