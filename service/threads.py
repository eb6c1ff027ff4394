"""Real OS threads and cross-thread hand-offs that work under gthread and gevent workers.

Under gevent, monkey patching turns `threading.Thread`, locks and queues into greenlet
primitives: a forward pass run in such a "thread" would block every request of the worker,
and a greenlet primitive touched from another OS thread can hang. So the batcher thread,
its lock and its queue come from the unpatched originals, and a request greenlet waiting
for its answer is woken through its hub's thread-safe callback. Under gthread the same
originals are simply the standard ones.

What runs in an OsThread still takes patched locks: TensorFlow, Keras, logging and
prometheus_client create theirs with `threading` after the worker has patched it (a
`tf.function` takes an RLock on every call, so two batcher threads contend for it). gevent
hands such a lock between OS threads only while those threads have no hub of their own
(gevent issue #1744: with one, cross-thread locks starve). But when a patched lock's retry
after a wake-up fails, gevent calls `gevent.sleep()`, which creates a hub in that thread,
and the thread can then wait forever on a lock that is free, holding the requests of its
batch. So an OsThread never gets a hub: there, that retry yields the GIL instead.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol


def gevent_is_active() -> bool:
    """True in a process where gevent has patched `threading` (a gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def _original(module: str, name: str):
    if gevent_is_active():
        from gevent import monkey

        return monkey.get_original(module, name)
    return getattr(__import__(module), name)


def new_lock():
    """A lock usable from request threads or greenlets and from the batcher's OS thread."""
    return _original("_thread", "allocate_lock")()


def new_queue():
    """An unbounded FIFO whose `get(timeout=...)` blocks only the calling OS thread."""
    return _original("queue", "SimpleQueue")()


def os_sleep(seconds: float) -> None:
    """Sleep the calling OS thread only (for an OsThread: gevent's patched sleep would give it a hub)."""
    _original("time", "sleep")(seconds)


_os_thread_marks = _original("_thread", "_local")()  # native: `in_os_thread` is set in OsThread's threads
_hubless_guard_installed = new_lock()


def _keep_os_threads_hubless() -> None:
    """Make a patched lock's retry in an OsThread yield the GIL instead of creating a gevent hub there.

    gevent's `LockType.acquire` calls `gevent.thread.sleep()` when a non-blocking acquire fails
    (its cross-thread wait retries that way after every wake-up), and `sleep()` creates the
    calling thread's hub. In every other thread (the worker's, gevent's threadpool) the call
    is left as it was. Idempotent; needs gevent.
    """
    from gevent import thread as gevent_thread
    from gevent._hub_local import get_hub_if_exists

    with _hubless_guard_installed:
        gevent_sleep = gevent_thread.sleep
        if getattr(gevent_sleep, "keeps_os_threads_hubless", False):
            return
        native_sleep = _original("time", "sleep")

        def sleep(seconds=0, ref=True):
            if getattr(_os_thread_marks, "in_os_thread", False) and get_hub_if_exists() is None:
                native_sleep(seconds)  # lets the holder run and release it; the caller then retries
                return
            gevent_sleep(seconds, ref)

        sleep.keeps_os_threads_hubless = True
        gevent_thread.sleep = sleep


class OsThread:
    """A daemon OS thread, never a greenlet, and under gevent never given a hub; `join()` waits for its target."""

    def __init__(self, target: Callable[[], None], name: str):
        self._finished = new_lock()
        self._finished.acquire()
        self.name = name
        if gevent_is_active():
            _keep_os_threads_hubless()

        def run():
            _os_thread_marks.in_os_thread = True
            try:
                target()
            finally:
                self._finished.release()

        _original("_thread", "start_new_thread")(run, ())

    def join(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the thread to finish; True if it did."""
        if self._finished.acquire(timeout=timeout_s):
            self._finished.release()
            return True
        return False


class Completion(Protocol):
    """Where the batcher thread delivers one request's answer; the request waits on it."""

    def resolve(self, value: Any) -> None: ...

    def fail(self, error: BaseException) -> None: ...

    def wait(self, timeout_s: float | None = None) -> Any: ...


class ThreadCompletion:
    """For gthread workers and plain threads: a standard future."""

    def __init__(self):
        self._future: concurrent.futures.Future = concurrent.futures.Future()

    def resolve(self, value):
        self._future.set_result(value)

    def fail(self, error):
        self._future.set_exception(error)

    def wait(self, timeout_s=None):
        return self._future.result(timeout=timeout_s)


class GreenletCompletion:
    """For gevent workers: resolved from the batcher thread through the waiter's hub.

    Must be created in the greenlet that waits: it captures that thread's hub, and
    `resolve`/`fail` schedule the wake-up on it with `run_callback_threadsafe`.
    """

    def __init__(self):
        import gevent
        from gevent.event import AsyncResult

        self._hub = gevent.get_hub()
        self._result = AsyncResult()

    def resolve(self, value):
        self._hub.loop.run_callback_threadsafe(self._result.set, value)

    def fail(self, error):
        self._hub.loop.run_callback_threadsafe(self._result.set_exception, error)

    def wait(self, timeout_s=None):
        import gevent

        try:
            return self._result.get(timeout=timeout_s)
        except gevent.Timeout:  # a BaseException: raised as ThreadCompletion's is
            raise TimeoutError(f"no answer within {timeout_s} s") from None


def spawn(target: Callable[[], None], name: str) -> None:
    """Run `target` beside the worker's requests: a greenlet under gevent, a daemon thread otherwise.

    For work that waits on the batcher like a request does (background jobs), not for the batcher.
    """
    if gevent_is_active():
        import gevent

        gevent.spawn(target).name = name
    else:
        threading.Thread(target=target, name=name, daemon=True).start()


def new_completion() -> Completion:
    """The completion that suits the calling worker's concurrency model."""
    return GreenletCompletion() if gevent_is_active() else ThreadCompletion()


def lower_this_thread(niceness: int) -> None:
    """Run the calling OS thread, and the threads and processes it starts, at `niceness` (Linux; else nothing)."""
    if hasattr(os, "setpriority"):
        this = _original("threading", "get_native_id")()
        os.setpriority(os.PRIO_PROCESS, this, max(niceness, os.getpriority(os.PRIO_PROCESS, this)))


SHORTER_SLICES = 10  # while a model loads beside requests: the interpreter's slices this many times shorter
_slices_lock = new_lock()  # held for a few statements, by the loading OS threads
_slices = {"loads": 0, "interval_s": 0.0}


@contextmanager
def shorter_interpreter_slices() -> Iterator[None]:
    """Make Python hand its interpreter lock over `SHORTER_SLICES` times as often while the body runs.

    A model loading beside the models serving (Keras building it, warming it up) runs Python for
    seconds; a thread that wants the lock waits for the running thread's slice to end. Shorter
    slices let the request threads and the batcher in between the load's steps (BENCHMARKS.md,
    "Many models"). Nested and concurrent loads keep the shorter slices until the last one ends.
    """
    with _slices_lock:
        if _slices["loads"] == 0:
            _slices["interval_s"] = sys.getswitchinterval()
            sys.setswitchinterval(_slices["interval_s"] / SHORTER_SLICES)
        _slices["loads"] += 1
    try:
        yield
    finally:
        with _slices_lock:
            _slices["loads"] -= 1
            if _slices["loads"] == 0:
                sys.setswitchinterval(_slices["interval_s"])


def yield_cores_to_this_thread(niceness: int) -> int:
    """Lower every other thread of this process to `niceness` (Linux); returns how many were lowered.

    Called in a worker once its model is warmed up (gunicorn.conf.py, COMPUTE_NICENESS): the
    other threads are then TensorFlow's and the batcher's, and the request threads the worker
    starts later keep this thread's priority. A request's Python work is short and its answer
    waits for it; a pass is long, and shares the cores with it. Raising niceness needs no privilege.
    """
    if niceness <= 0 or not hasattr(os, "setpriority") or not os.path.isdir("/proc/self/task"):
        return 0
    this = _original("threading", "get_native_id")()
    lowered = 0
    for task in os.listdir("/proc/self/task"):
        if int(task) != this:
            try:
                os.setpriority(os.PRIO_PROCESS, int(task), max(niceness, os.getpriority(os.PRIO_PROCESS, int(task))))
                lowered += 1
            except ProcessLookupError:
                pass  # ended meanwhile
    return lowered


@dataclass(frozen=True)
class ProcessResult:
    returncode: int | None  # None: another reaper took the exit status (a gevent worker's child watcher)
    stdout: str
    stderr: str


CHILD_CHECK_S = 0.02  # how often a child's end is looked for


def run_process(argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> ProcessResult:
    """Run a program to its end from any thread, and its output; TimeoutError (the child killed) after `timeout_s`.

    Under gevent, `subprocess` needs the child watcher of the default loop, which an OsThread has
    not ("child watchers are only available on the default loop"): the child is spawned and waited
    for with the unpatched `os.posix_spawn` and `os.waitpid`, its output written to files. In a
    gevent worker the loop's own watcher may reap the child first: its exit status is then lost
    (`returncode` None), and the caller judges by what the child wrote.
    """
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        redirects = [(os.POSIX_SPAWN_DUP2, stdout.fileno(), 1), (os.POSIX_SPAWN_DUP2, stderr.fileno(), 2)]
        pid = _original("os", "posix_spawn")(argv[0], list(argv), dict(env), file_actions=redirects)
        waitpid, deadline = _original("os", "waitpid"), time.monotonic() + timeout_s
        while True:
            try:
                done_pid, status = waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped already: libev's SIGCHLD watcher waits for every child
                done_pid, status = pid, None
            if done_pid:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                waitpid(pid, 0)
                raise TimeoutError(f"{argv[0]} {' '.join(argv[1:3])} ran longer than {timeout_s:.0f} s")
            os_sleep(CHILD_CHECK_S)
        stdout.seek(0)
        stderr.seek(0)
        return ProcessResult(
            None if status is None else os.waitstatus_to_exitcode(status),
            stdout.read().decode(errors="replace"),
            stderr.read().decode(errors="replace"),
        )
