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
    """Starts `redis-server` on a free port; stops it and removes its directory on exit.

    Without persistence by default; `persistent` keeps an append-only file synced at every write,
    so a Redis killed and started again (`restart`) has lost nothing.
    """

    def __init__(self, executable: str = "redis-server", persistent: bool = False):
        self.persistent = persistent
        found = shutil.which(executable)
        if found is None:
            raise RuntimeError(f"{executable} is not installed (Debian: apt-get install redis-server)")
        self._executable = found
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = tempfile.TemporaryDirectory(prefix="redis-")
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        self.start()
        return self.url

    def __exit__(self, *exc) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)
        self._directory.cleanup()

    def start(self) -> None:
        """Start the server (again, on the same port and directory) and wait until it answers."""
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence]
        self._process = subprocess.Popen(
            [self._executable, *options, "--dir", self._directory.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_ready()

    def kill(self) -> None:
        """Kill the server as a crash would: it saves nothing on the way out."""
        self._process.kill()
        self._process.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

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
