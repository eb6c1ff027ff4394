"""Run a command and report how long it took and the peak memory of its whole process tree, sampled.

    .venv/bin/python -m scripts.peak_memory -- make test

Every `--interval` seconds it sums the resident memory (RSS) of the command and all its
descendants (test servers, their workers, measuring children). RSS counts a page shared between
processes once in each, so the sum is an upper bound of what the tree holds. The last line is
JSON: the command's exit code, its wall time and the peak; the line before it names the largest
processes at the peak, to say where the memory went.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time

import psutil

NAMING = ("MODEL_PATH", "MODEL_BASE_PATH", "MODEL_CONFIG_FILE", "WORKER_CLASS", "PORT")  # which server it is


def tree_rss(root: psutil.Process) -> list[tuple[int, str]]:
    """(RSS bytes, what it runs: its command, and for a server the settings that tell it apart) of each process."""
    sizes = []
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):  # ended since it was listed
            rss, command = process.memory_info().rss, " ".join(process.cmdline())[:60]
            if "gunicorn" in command:
                environ = process.environ()
                command += " " + " ".join(f"{name}={environ[name]}" for name in NAMING if name in environ)
            sizes.append((rss, command))
    return sizes


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
    root, peak, at_peak = psutil.Process(child.pid), 0, []
    while child.poll() is None:
        sizes = tree_rss(root)
        if sum(size for size, _ in sizes) > peak:
            peak, at_peak = sum(size for size, _ in sizes), sorted(sizes, reverse=True)
        time.sleep(args.interval)  # the sampling period
    largest = "; ".join(f"{size / 2**20:.0f} MiB {command}" for size, command in at_peak[:12])
    print(f"at the peak ({len(at_peak)} processes), the largest: {largest}", flush=True)
    report = {
        "exit_code": child.returncode,
        "wall_s": round(time.monotonic() - started, 1),
        "peak_rss_gib": round(peak / 2**30, 2),
    }
    print(json.dumps(report), flush=True)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
