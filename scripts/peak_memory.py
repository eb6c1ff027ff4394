"""Run a command and report how long it took and the peak memory of its whole process tree, sampled.

    .venv/bin/python -m scripts.peak_memory -- make test

Every `--interval` seconds it sums the resident memory (RSS) of the command and all its
descendants (test servers, their workers, measuring children). RSS counts a page shared between
processes once in each, so the sum is an upper bound of what the tree holds. The last line is
JSON: the command's exit code, its wall time and the peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time

import psutil


def tree_rss_bytes(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):  # ended since it was listed
            total += process.memory_info().rss
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    started = time.monotonic()
    child = subprocess.Popen(command)
    root, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        peak = max(peak, tree_rss_bytes(root))
        time.sleep(args.interval)  # the sampling period
    report = {
        "exit_code": child.returncode,
        "wall_s": round(time.monotonic() - started, 1),
        "peak_rss_gib": round(peak / 2**30, 2),
    }
    print(json.dumps(report), flush=True)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
