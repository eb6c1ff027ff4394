"""Start this service under a real Gunicorn as a child process, for tests and benchmark scripts.

The server is ready when `/readyz` answers 200; we poll it with a deadline rather than
sleeping, and stop the whole process group on exit so no worker outlives its caller.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ServerFailedToStart(RuntimeError):
    """The server exited or was not ready in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SERVICE_COMMAND = ("-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app")


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll `url`/readyz until it answers 200; ServerFailedToStart if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailedToStart(f"the server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)  # polling interval, not a wait for readiness
    raise ServerFailedToStart(f"not ready after {timeout_s:.0f} s")


class LiveServer:
    """`gunicorn -c gunicorn.conf.py wsgi:app` with the given settings (environment variables).

    `command` replaces the Python arguments (for a baseline server); it is formatted with
    `{port}` and must serve `GET /readyz`.
    """

    def __init__(self, env: dict[str, str], log_path: Path | None = None, command: tuple[str, ...] = SERVICE_COMMAND):
        self.port = int(env.get("PORT") or free_port())
        self.grpc_port = int(env.get("GRPC_PORT") or free_port())  # never TF Serving's 8500 shared by two servers
        self.env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port), "GRPC_PORT": str(self.grpc_port)}
        if not env.get("JOBS_DB") and not env.get("REDIS_URL"):  # a fresh jobs file, not the user's state directory
            jobs_db = Path(f"/tmp/tf-model-server-{self.port}-jobs.sqlite3")
            for stale in (jobs_db, jobs_db.with_name(jobs_db.name + "-wal"), jobs_db.with_name(jobs_db.name + "-shm")):
                stale.unlink(missing_ok=True)
            self.env["JOBS_DB"] = str(jobs_db)
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"  # 0: gRPC off
        self.log_path = log_path or Path(f"/tmp/tf-model-server-{self.port}.log")
        self.process: subprocess.Popen | None = None
        self.command = [sys.executable, *(part.format(port=self.port) for part in command)]

    def start(self, ready_timeout_s: float = 180.0) -> LiveServer:
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            self.command,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        try:
            wait_until_ready(self.url, self.process, timeout_s)
        except ServerFailedToStart as error:
            self.stop()
            raise ServerFailedToStart(f"{error}:\n{self.log()[-4000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_grpc(self, workers: int, timeout_s: float = 120.0) -> None:
        """Wait until `workers` workers serve gRPC (/readyz answers as soon as one serves HTTP)."""
        deadline = time.monotonic() + timeout_s
        while self.log().count("gRPC: serving") < workers:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise ServerFailedToStart(f"{workers} workers did not all start gRPC:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM the master (graceful), then SIGKILL the group if it outstays `timeout_s`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
