"""The model's in-process limit: its compiled forward pass timed in a child process, with no HTTP.

bench.py sets every load level against this limit, measured again after each level while the
server idles (a shared machine's speed drifts). The child keeps the model loaded and measures
whenever its parent writes `measure`:

    python -m scripts.in_process_limit --model models/heavy.keras --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from scripts.launcher import PROJECT_ROOT


@dataclass(frozen=True)
class InProcessLimit:
    batch1_ms: float
    max_batch_size: int
    max_batch_ms: float  # one full batch at a time
    two_at_once_ms: float  # per full batch, while two run side by side
    batch_ms: dict[int, float] = field(default_factory=dict)  # a batch of each closed loop's C clients (C < max)

    def batch_of_rps(self, size: int) -> float | None:
        """Instances per second of one batch of `size` after another (a closed loop of `size` clients at best)."""
        if size == self.max_batch_size:
            return self.throughput_rps
        return size / (self.batch_ms[size] / 1000) if size in self.batch_ms else None

    @property
    def throughput_rps(self) -> float:
        """The issue's in-process limit: instances per second of one full batch after another."""
        return self.max_batch_size / (self.max_batch_ms / 1000)

    @property
    def two_at_once_rps(self) -> float:
        return self.max_batch_size / (self.two_at_once_ms / 1000)

    @staticmethod
    def mean(before: InProcessLimit, after: InProcessLimit) -> InProcessLimit:
        return InProcessLimit(
            (before.batch1_ms + after.batch1_ms) / 2,
            before.max_batch_size,
            (before.max_batch_ms + after.max_batch_ms) / 2,
            (before.two_at_once_ms + after.two_at_once_ms) / 2,
            {size: (before.batch_ms[size] + after.batch_ms[size]) / 2 for size in before.batch_ms},
        )


def serve_in_process_measurements(
    model_path: str, max_batch_size: int, intra_op_threads: int, repeats: int, closed_loop_sizes: tuple[int, ...] = ()
) -> None:
    """Runs in a child process: TF is configured as a worker would be; each stdin line asks for one measurement.

    Besides batch 1 and the largest, it times a batch of each of `closed_loop_sizes` between them:
    what a closed loop of that many clients could do at best, one batch of all of them after another.
    """
    import numpy as np

    from service.backends import backend_for, load_served_model

    backend_for(model_path).configure(intra_op_threads, 2, None)
    sizes = sorted({1, max_batch_size, *(size for size in closed_loop_sizes if 1 < size < max_batch_size)})
    model = load_served_model(model_path, "bench", 1, tuple(sizes))
    model.warm_up()
    rng = np.random.default_rng(0)
    batches = {
        size: {
            info.name: rng.random((size, *(dim or 1 for dim in info.instance_shape))).astype(info.dtype)
            for info in model.signature.inputs
        }
        for size in sizes
    }

    def median_ms(size: int) -> float:
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.run(batches[size])
            timings.append(time.perf_counter() - started)
        return 1000 * statistics.median(timings)

    def two_at_once_ms() -> float:
        """Milliseconds per batch while two threads run full batches side by side."""

        def run_batches():
            for _ in range(repeats // 2):
                model.run(batches[max_batch_size])

        threads = [threading.Thread(target=run_batches) for _ in range(2)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return 1000 * (time.perf_counter() - started) / (2 * (repeats // 2))

    print("ready", flush=True)
    for _ in sys.stdin:
        between = {size: median_ms(size) for size in sizes[1:-1]}
        limit = InProcessLimit(median_ms(1), max_batch_size, median_ms(max_batch_size), two_at_once_ms(), between)
        print(json.dumps(limit.__dict__), flush=True)


class InProcessProbe:
    """A child process holding the model, measuring its in-process limit whenever asked."""

    def __init__(self, model_path: str, max_batch_size: int, intra_op_threads: int, concurrency: list[int]):
        command = [sys.executable, "-m", "scripts.in_process_limit", "--model", model_path]
        command += ["--max-batch-size", str(max_batch_size), "--intra-op-threads", str(intra_op_threads)]
        command += ["--concurrency", *map(str, concurrency)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self._child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=PROJECT_ROOT
        )
        if self._child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the in-process measurement of {model_path} failed to start")

    def measure(self) -> InProcessLimit:
        self._child.stdin.write("measure\n")
        self._child.stdin.flush()
        measured = json.loads(self._child.stdout.readline())
        measured["batch_ms"] = {int(size): ms for size, ms in measured["batch_ms"].items()}
        return InProcessLimit(**measured)

    def close(self) -> None:
        self._child.stdin.close()
        self._child.wait(timeout=60)

    def __enter__(self) -> InProcessProbe:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say what is measured: bench.py's and this script's."""
    parser.add_argument("--model", default="models/heavy.keras")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--intra-op-threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32, 128])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    args = parser.parse_args()
    sizes = tuple(args.concurrency)
    serve_in_process_measurements(args.model, args.max_batch_size, args.intra_op_threads, 30, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
