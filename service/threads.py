"""Real OS threads and cross-thread hand-offs that work under gthread and gevent workers.

Under gevent, monkey patching turns `threading.Thread`, locks and queues into greenlet
primitives: a forward pass run in such a "thread" would block every request of the worker,
and a greenlet primitive touched from another OS thread can hang. So the batcher thread,
its lock and its queue come from the unpatched originals, and a request greenlet waiting
for its answer is woken through its hub's thread-safe callback. Under gthread the same
originals are simply the standard ones.
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable
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


class OsThread:
    """A daemon OS thread, never a greenlet; `join()` waits for its target to return."""

    def __init__(self, target: Callable[[], None], name: str):
        self._finished = new_lock()
        self._finished.acquire()
        self.name = name

        def run():
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
        return self._result.get(timeout=timeout_s)


def new_completion() -> Completion:
    """The completion that suits the calling worker's concurrency model."""
    return GreenletCompletion() if gevent_is_active() else ThreadCompletion()
