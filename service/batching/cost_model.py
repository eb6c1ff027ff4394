"""What a forward pass costs at each batch size: seeded by the warm-up probe, learned from real batches.

Every batch is padded up to a compiled size, so the cost of n instances is the cost of the
smallest compiled size that holds them: a step function, kept as one estimate per size.
Each estimate starts at the probe's median and follows the batches that ran alone with an
exponentially weighted mean. A batch run beside another is slowed by it and says nothing
about its own size; what it says is how much passes slow each other, kept as one factor.
The least-squares line through the estimates is only for reports.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

# Weight of the newest batch in a size's running estimate: about the last 10 batches count.
SMOOTHING = 0.1

# Until passes have run beside each other here, assume two passes share the machine evenly: each takes twice as long.
INITIAL_BESIDE_FACTOR = 2.0

# A larger batch pays while it serves at least this much more per second than the best smaller one.
MIN_THROUGHPUT_GAIN = 0.1


class CostModel:
    """Seconds per forward pass for each compiled batch size; `seconds(n)` for any n."""

    def __init__(self, seconds_by_size: Mapping[int, float], smoothing: float = SMOOTHING):
        if not seconds_by_size or min(seconds_by_size) < 1 or min(seconds_by_size.values()) <= 0:
            raise ValueError("need a positive time for at least one batch size >= 1")
        self.sizes = tuple(sorted(seconds_by_size))
        self._seconds = {size: float(seconds_by_size[size]) for size in self.sizes}
        self._smoothing = smoothing
        self.observations = 0
        self.beside_factor = INITIAL_BESIDE_FACTOR  # a pass beside another takes this times its time alone

    def padded(self, instances: int) -> int:
        """The compiled size a batch of `instances` runs at (the largest size beyond it)."""
        index = bisect.bisect_left(self.sizes, max(1, instances))
        return self.sizes[min(index, len(self.sizes) - 1)]

    def seconds(self, instances: int, beside: bool = False) -> float:
        """Expected forward-pass time of a batch of `instances` (0 for none), alone or `beside` another pass."""
        alone = self._seconds[self.padded(instances)] if instances > 0 else 0.0
        return alone * self.beside_factor if beside else alone

    def full_pass_seconds(self) -> float:
        """Expected time of a pass at the largest compiled size, alone: the scale of this worker's waits."""
        return self._seconds[self.sizes[-1]]

    def observe(self, instances: int, seconds: float) -> None:
        """Fold in a batch of `instances` that ran alone and took `seconds`."""
        size = self.padded(instances)
        self._seconds[size] += self._smoothing * (seconds - self._seconds[size])
        self.observations += 1

    def observe_beside(self, instances: int, seconds: float) -> None:
        """Fold in a batch of `instances` that ran beside another pass and took `seconds`."""
        factor = seconds / self.seconds(instances)
        self.beside_factor += self._smoothing * (max(1.0, factor) - self.beside_factor)

    def line(self) -> tuple[float, float]:
        """(fixed seconds, seconds per instance) of the least-squares line through the estimates."""
        xs, ys = self.sizes, [self._seconds[size] for size in self.sizes]
        if len(xs) == 1:
            return ys[0], 0.0
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mean_x) ** 2 for x in xs
        )
        return mean_y - slope * mean_x, slope

    def describe(self) -> dict:
        fixed_s, per_instance_s = self.line()
        return {
            "ms_by_batch_size": {str(size): round(self._seconds[size] * 1000, 3) for size in self.sizes},
            "line": {"fixed_ms": round(fixed_s * 1000, 3), "per_instance_ms": round(per_instance_s * 1000, 4)},
            "batches_learned_from": self.observations,
            "beside_factor": round(self.beside_factor, 3),
        }


def largest_paying_size(seconds_by_size: Mapping[int, float], min_gain: float = MIN_THROUGHPUT_GAIN) -> int:
    """The batch size beyond which larger batches stop paying on this machine.

    Walks up the sizes and moves to a larger one only when it serves at least `min_gain`
    more instances per second than the size chosen so far, so one noisy timing cannot
    carry the choice past a plateau.
    """
    sizes = sorted(seconds_by_size)
    chosen = sizes[0]
    for size in sizes[1:]:
        if size / seconds_by_size[size] >= (1 + min_gain) * chosen / seconds_by_size[chosen]:
            chosen = size
    return chosen
