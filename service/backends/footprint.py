"""Measure how much RAM one worker needs for the model, without TensorFlow in the master.

The master runs `python -m service.backends.footprint` as a child process: it imports the model's
runtime (TensorFlow or onnxruntime), loads the model, warms up every batch size and reports its
resident memory at each step.
The figure is cached under the model files' SHA-256, so only the first start pays for it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.backends.children import finished, last_error_line, run_module_on_host


class FootprintError(RuntimeError):
    """The measuring child could not load the model: the message says why in one line, `output` is all it wrote."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class Footprint:
    runtime_bytes: int  # Python with the model's runtime imported, before the model
    model_bytes: int  # growth from loading the model and warming up every batch size
    cached: bool = False

    @property
    def worker_bytes(self) -> int:
        """What each worker process costs: every worker imports the runtime and loads the model."""
        return self.runtime_bytes + self.model_bytes

    @classmethod
    def together(cls, parts: list[tuple[str, Footprint]]) -> Footprint:
        """The footprint of a worker serving several models, from each one's and its runtime's name: each runtime
        is imported once (the largest measurement of it counts), and every model is loaded."""
        runtimes: dict[str, int] = {}
        for runtime, footprint in parts:
            runtimes[runtime] = max(runtimes.get(runtime, 0), footprint.runtime_bytes)
        return cls(
            sum(runtimes.values()),
            sum(footprint.model_bytes for _, footprint in parts),
            cached=all(footprint.cached for _, footprint in parts),
        )


def model_digest(path: str) -> str:
    """SHA-256 over the model's files (one `.keras` file or a SavedModel directory tree).

    Remembered while the files' names, inodes, sizes and times stay the same: the master computes it
    for the footprint cache before it forks, and a worker's result cache asks again for its keys.
    """
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    names = tuple(str(file.relative_to(root) if root.is_dir() else file.name) for file in files)
    stats = tuple((stat.st_ino, stat.st_size, stat.st_mtime_ns) for stat in (file.stat() for file in files))
    return _digest(tuple(map(str, files)), names, stats)


@functools.lru_cache(maxsize=8)
def _digest(files: tuple[str, ...], names: tuple[str, ...], stats: tuple) -> str:
    digest = hashlib.sha256()
    for file, name in zip(files, names, strict=True):
        digest.update(name.encode())
        with open(file, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def measure_footprint(
    model_path: str, batch_sizes: Sequence[int], cache_path: str, backend_choice: str = "auto"
) -> Footprint:
    """The model's footprint from the cache, or measured in a child process and cached."""
    cache_file = Path(cache_path).expanduser()
    key = f"{model_digest(model_path)}/batches={','.join(map(str, batch_sizes))}/backend={backend_choice}"
    cache = _read_cache(cache_file)
    if key in cache:
        return Footprint(**cache[key], cached=True)
    # The child must see no GPU: it measures host RAM and must not hold GPU memory.
    done = run_module_on_host(
        "service.backends.footprint", os.path.abspath(model_path), ",".join(map(str, batch_sizes)), backend_choice
    )
    if not finished(done, "{"):
        raise FootprintError(f"{model_path!r} cannot be loaded: {last_error_line(done.stderr)}", done.stderr)
    footprint = Footprint(**json.loads(done.stdout.strip().splitlines()[-1]))
    cache[key] = {k: v for k, v in dataclasses.asdict(footprint).items() if k != "cached"}
    _write_cache(cache_file, cache)
    return footprint


def _read_cache(cache_file: Path) -> dict:
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache_file: Path, cache: dict) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(cache, indent=1))
        temporary.replace(cache_file)
    except OSError:
        pass  # an unwritable cache only costs a re-measurement at the next start


def _measure_here(model_path: str, batch_sizes: Sequence[int], backend_choice: str) -> Footprint:
    import importlib

    import psutil

    from service.backends import backend_for, load_served_model

    process = psutil.Process()
    importlib.import_module(backend_for(model_path, backend_choice).runtime_module)  # part of every worker's cost
    runtime_bytes = process.memory_info().rss
    model = load_served_model(model_path, "footprint", 1, batch_sizes, backend_choice)
    model.warm_up(repeats=1)
    return Footprint(runtime_bytes=runtime_bytes, model_bytes=max(0, process.memory_info().rss - runtime_bytes))


if __name__ == "__main__":
    path, sizes, choice = sys.argv[1], [int(size) for size in sys.argv[2].split(",")], sys.argv[3]
    measured = _measure_here(path, sizes, choice)
    print(json.dumps({"runtime_bytes": measured.runtime_bytes, "model_bytes": measured.model_bytes}))
