"""A Python module run in a child process on the host, from the master or a worker, and what it left behind.

The footprint measurement (footprint.py) and the Keras weights reader (keras_weights.py) each run
`python -m <module>` this way: the child sees no GPU (it measures or reads host memory and must
hold no GPU memory) and finds `service` whether or not the project is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from service.threads import ProcessResult, run_process

CHILD_TIMEOUT_S = 900
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # `service` is importable from there, installed or not


def run_module_on_host(module: str, *args: str) -> ProcessResult:
    """`python -m module args` in a child that sees no GPU (host memory only), within CHILD_TIMEOUT_S."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(PROJECT_ROOT), env.get("PYTHONPATH"))))
    return run_process([sys.executable, "-m", module, *args], env, CHILD_TIMEOUT_S)


def finished(done: ProcessResult, last_line_start: str) -> bool:
    """Whether a child ran to its end: its exit code says so, or (when another reaper took it) its last line."""
    if done.returncode is not None:
        return done.returncode == 0
    lines = done.stdout.strip().splitlines()
    return bool(lines) and lines[-1].startswith(last_line_start)


def last_error_line(output: str) -> str:
    """The line of a Python traceback that says what went wrong, without the exception's module path."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return "it exited without a word"
    kind, colon, message = lines[-1].partition(": ")
    return f"{kind.rpartition('.')[2]}: {message}" if colon and " " not in kind else lines[-1]
