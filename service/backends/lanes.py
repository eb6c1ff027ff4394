"""CPU lanes: each model of a worker runs on a CPU device of its own, with a thread pool of its own.

TensorFlow runs every op of a process in one intra-op thread pool: a light model's ops queue
behind the shards of a heavy model's pass, so its passes take as long as the heavy one's
(BENCHMARKS.md, "Many models": its p50 went from 9 to 76 ms). A worker serving several models
can therefore split its CPU into logical devices (`CPU_LANES`), each with its own pool of the
worker's intra-op threads (`TensorFlowBackend.configure`), and place each model on one: the
operating system then shares the cores between the pools as it does between processes, and
a model alone still uses every core. The lanes are fixed when the worker starts (TensorFlow
sets its devices once); models added later share the least used one.

Off by default: two passes at once then run twice the threads on the same cores. Under a
heavy model's flood the light model's p50 halved, but the heavy model lost about 15% of its
throughput, and with three models all busy the p50 of every model rose three- to fourfold.
"""

from __future__ import annotations

from collections import Counter

from service.threads import new_lock


class CpuLanes:
    """Which lane (CPU device name) each model runs on; None for every model when there is one lane."""

    def __init__(self, count: int = 1):
        if count < 1:
            raise ValueError("need at least one lane")
        self.count = count
        self._lock = new_lock()
        self._lane_of: dict[str, int] = {}

    def lane_for(self, model: str) -> str | None:
        """`model`'s device: the one it already has, or the lane fewest models hold (the lowest on a tie)."""
        if self.count == 1:
            return None
        with self._lock:
            if model not in self._lane_of:
                held = Counter(self._lane_of.values())
                self._lane_of[model] = min(range(self.count), key=lambda lane: held[lane])
            return f"/device:CPU:{self._lane_of[model]}"

    def release(self, model: str) -> None:
        """`model` is let go of: its lane counts one model fewer."""
        with self._lock:
            self._lane_of.pop(model, None)
