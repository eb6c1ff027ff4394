"""A throwaway Redis server on 127.0.0.1 (Debian's `redis-server`), for tests and benchmarks.

with LocalRedis() as url:   # redis://127.0.0.1:<free port>/0, ready to answer
    ...
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import redis

READY_DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalRedis:
    """Starts `redis-server` without persistence on a free port; stops it and removes its directory on exit."""

    def __init__(self, executable: str = "redis-server"):
        found = shutil.which(executable)
        if found is None:
            raise RuntimeError(f"{executable} is not installed (Debian: apt-get install redis-server)")
        self._executable = found
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = tempfile.TemporaryDirectory(prefix="redis-")
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(
            [self._executable, *options, "--dir", self._directory.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_ready()
        return self.url

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
        self._directory.cleanup()

    def _wait_until_ready(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + READY_DEADLINE_S
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode} before it was ready")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)  # polling a readiness probe with a deadline, not waiting a fixed time
