"""Helpers the tests share: polling with a deadline, a server's workers, and clients that keep a server busy."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import psutil
import pytest
import requests

POLL_S = 0.05  # how often a condition is looked at: polling with a deadline, never a wait for something to happen


def wait_until(condition: Callable[[], object], timeout_s: float = 120.0, what: str = "the condition") -> object:
    """Poll `condition` until it returns something true, which is returned; the test fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outcome = condition()
        if outcome:
            return outcome
        time.sleep(POLL_S)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s")


def worker_pids(master_pid: int) -> set[int]:
    """The pids of a Gunicorn master's live workers."""
    return {child.pid for child in psutil.Process(master_pid).children() if child.status() != psutil.STATUS_ZOMBIE}


class Clients:
    """`count` clients posting `body` to `url` in a loop, counting each answer by status and by what `read` says of it.

    A connection error is counted as the status "error". Use as a context manager: the clients
    stop, and are joined, on exit.
    """

    def __init__(self, url: str, body: dict, count: int = 4, read: Callable[[dict], object] = lambda answer: None):
        self._url, self._body, self._read = url, body, read
        self.statuses: Counter = Counter()
        self.answers: Counter = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]

    def _loop(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    answer = session.post(self._url, json=self._body, timeout=60)
                except requests.ConnectionError:
                    self.statuses["error"] += 1
                    continue
                self.statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    self.answers[self._read(answer.json())] += 1

    def total(self) -> int:
        return sum(self.statuses.values())

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
