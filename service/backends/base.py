"""What a backend gives the batcher, and what the service builds on it whatever the backend.

A backend (service/backends/tensorflow.py, onnx.py) loads one kind of model file into a signature and a
forward pass over padded batches (`Forward`); `ServedModel` adds what every backend needs
around it: padding each batch up to one of a few compiled sizes, splitting and merging the
requests of a batch, and the warm-up that builds and times every size before the worker
reports ready. Nothing here imports a machine-learning framework.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.backends.signature import ModelSignature, TensorInfo, describe_metadata
from service.threads import OsThread

log = logging.getLogger(__name__)

# On a GPU a batch size is served only if this many more rows also fit, several passes at once.
GPU_BATCH_MARGIN = 0.25

Arrays = dict[str, np.ndarray]
Forward = Callable[[Arrays], Arrays]


class ModelLoadError(RuntimeError):
    """The model file cannot be served; the message says why."""


class InputRejected(ValueError):
    """The model refused these inputs (for example TensorFlow's InvalidArgumentError): the client's to fix."""


class OutOfDeviceMemory(RuntimeError):
    """A forward pass did not fit the device's memory (for example TensorFlow's ResourceExhaustedError)."""


class Backend(Protocol):
    """A framework that runs models: the one interface the rest of the service knows it by."""

    name: str
    runtime_module: str  # what the backend imports: its memory is part of every worker's footprint
    platform: str  # the Open Inference Protocol's metadata names the runtime so

    def can_load(self, path: str) -> bool:
        """Whether `path` is a model this backend loads (by its suffix or layout, without loading it)."""

    def configure(
        self, intra_op_threads: int, inter_op_threads: int, gpu_memory_limit_mb: int | None, cpu_lanes: int = 1
    ) -> list[str]:
        """In a worker, before the model is loaded: thread pools, CPU lanes (service/backends/lanes.py) and device
        memory; returns the devices seen."""

    def load(self, path: str, device: str | None = None, gently: bool = False) -> tuple[ModelSignature, Forward]:
        """The model's signature and its forward pass on `device` (a CPU lane; None: the backend's default); raises
        ModelLoadError saying why it cannot be served. `gently`: other models serve meanwhile, so no step of the
        load may hold the interpreter lock long.

        The forward pass takes and returns arrays keyed by tensor name, for any batch size it
        is given; it raises InputRejected for inputs the model refuses and OutOfDeviceMemory
        when a batch does not fit the device.
        """


@dataclass(frozen=True)
class PassTimes:
    """One forward pass of a batch, by stage, as Triton's statistics name them."""

    instances: int
    requests: int
    compute_input_s: float  # the requests' inputs merged
    compute_infer_s: float  # padded to a compiled size, run, trimmed
    compute_output_s: float  # the outputs split into each request's


class ServedModel:
    """A forward pass over padded batches, with the request-level split and merge around it.

    `forward` takes and returns arrays keyed by tensor name whose first dimension is one
    of `batch_sizes`; `predict` is what the batcher calls.
    """

    def __init__(
        self,
        name: str,
        version: int,
        signature: ModelSignature,
        forward: Forward,
        batch_sizes: Sequence[int],
        platform: str = "tensorflow_savedmodel",
        path: str = "",
    ):
        self.name = name
        self.path = path  # the files it was loaded from (empty for a model built in memory)
        self.version = version
        self.signature = signature
        self.platform = platform
        self.batch_sizes = tuple(sorted(batch_sizes))
        self._forward = forward
        self.warm_up_seconds: dict[int, float] = {}
        self.observe_pass: Callable[[PassTimes], None] | None = None  # told of every pass's stages (statistics)

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def metadata(self) -> dict:
        return describe_metadata(self.name, self.version, self.signature)

    def predict(self, payloads: list[Arrays]) -> list[Arrays]:
        """Run the payloads (each with its own instance count) together; answer each with its own rows.

        Payloads whose non-batch dimensions differ (models with variable-size inputs) are
        run as separate forward passes within the batch.
        """
        results: list[Arrays | None] = [None] * len(payloads)
        groups: dict[tuple, list[int]] = {}
        for position, payload in enumerate(payloads):
            key = tuple(payload[info.name].shape[1:] for info in self.signature.inputs)
            groups.setdefault(key, []).append(position)
        for positions in groups.values():
            began_at = time.monotonic()
            merged = {
                info.name: np.concatenate([payloads[p][info.name] for p in positions]) for info in self.signature.inputs
            }
            merged_at = time.monotonic()
            outputs = self.run(merged)
            ran_at = time.monotonic()
            start = 0
            for p in positions:
                count = len(payloads[p][self.signature.inputs[0].name])
                results[p] = {name: array[start : start + count] for name, array in outputs.items()}
                start += count
            if self.observe_pass is not None:
                stages = (merged_at - began_at, ran_at - merged_at, time.monotonic() - ran_at)
                self.observe_pass(PassTimes(start, len(positions), *stages))
        return results

    def run(self, inputs: Arrays) -> Arrays:
        """Forward pass for any count up to the largest batch size: pad, run, trim."""
        count = len(inputs[self.signature.inputs[0].name])
        padded_size = next((size for size in self.batch_sizes if size >= count), None)
        if padded_size is None:
            raise ValueError(f"{count} instances exceed the largest compiled batch size {self.max_batch_size}")
        if padded_size > count:
            inputs = {name: _pad_rows(array, padded_size) for name, array in inputs.items()}
        outputs = self._forward(inputs)
        return {name: array[:count] for name, array in outputs.items()}

    def warm_up(
        self, repeats: int = 3, memory_check_passes: int = 0, pause: Callable[[float], None] | None = None
    ) -> dict[int, float]:
        """Run every padded batch size so no shape is first built while serving; time each.

        Returns the median forward-pass time per batch size after the first (building) call.
        With `memory_check_passes` (on a GPU: the worker's concurrent batches), each size is
        first run that many times at once with GPU_BATCH_MARGIN more rows; the first size
        that runs out of device memory ends the warm-up, and it and larger sizes are left out
        of the answer (the largest size that fits is then the largest key). With `pause`, each
        pass is followed by `pause(seconds the pass took)`: a version warming up beside one that
        serves leaves it half the cores.
        """
        self.warm_up_seconds = {}
        for size in self.batch_sizes:
            if memory_check_passes and not self._fits_in_memory(size, memory_check_passes):
                log.warning(
                    "batch %d with a %d%% margin (%d at once) does not fit the device's memory; serving up to %s",
                    size, 100 * GPU_BATCH_MARGIN, memory_check_passes, max(self.warm_up_seconds, default="none"),
                )  # fmt: skip
                break
            sample = {info.name: _sample_batch(info, size) for info in self.signature.inputs}
            timings = []
            for _ in range(1 + repeats):  # the first call builds the size's kernels, and is not timed
                started = time.perf_counter()
                self._forward(sample)
                timings.append(time.perf_counter() - started)
                if pause is not None:
                    pause(timings[-1])
            self.warm_up_seconds[size] = statistics.median(timings[1:])
        if not self.warm_up_seconds:
            raise ModelLoadError("not even a batch of 1 fits the device's memory; lower WORKERS_PER_GPU or the model")
        log.info(
            "warm-up done: %s",
            ", ".join(f"batch {size}: {seconds * 1000:.1f} ms" for size, seconds in self.warm_up_seconds.items()),
        )
        return self.warm_up_seconds

    def _fits_in_memory(self, size: int, passes: int) -> bool:
        """Run `passes` forward passes of `size` plus the margin at once; False if the device runs out of memory."""
        probe_size = math.ceil(size * (1 + GPU_BATCH_MARGIN))
        sample = {info.name: _sample_batch(info, probe_size) for info in self.signature.inputs}
        errors: list[BaseException] = []

        def one_pass():
            try:
                self._forward(sample)
            except Exception as error:
                errors.append(error)

        threads = [OsThread(one_pass, f"memory-probe-{index}") for index in range(passes)]
        for thread in threads:
            thread.join(timeout_s=600)
        out_of_memory = [error for error in errors if isinstance(error, OutOfDeviceMemory)]
        if len(out_of_memory) < len(errors):
            raise next(error for error in errors if not isinstance(error, OutOfDeviceMemory))
        return not out_of_memory


@dataclass(frozen=True)
class ModelInputs:
    """A request's inputs and the model version that runs them: what the worker's batcher queues.

    The version is chosen when the request arrives, so a request already queued when a new
    version takes over is still run by the one it was accepted for.
    """

    model: ServedModel
    inputs: Arrays


def predict_each_model(payloads: Sequence[ModelInputs]) -> list[Arrays]:
    """The worker's batch function: the payloads of each model (version) in passes of their own, answers in order."""
    results: list[Arrays | None] = [None] * len(payloads)
    by_model: dict[int, list[int]] = {}
    for position, payload in enumerate(payloads):
        by_model.setdefault(id(payload.model), []).append(position)
    for positions in by_model.values():
        model = payloads[positions[0]].model
        for position, result in zip(positions, model.predict([payloads[p].inputs for p in positions]), strict=True):
            results[position] = result
    return results


def _pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row up to `size` rows: valid input for any dtype, discarded after the pass."""
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def _sample_batch(info: TensorInfo, size: int) -> np.ndarray:
    shape = (size, *(1 if dim is None else dim for dim in info.instance_shape))
    if info.dtype == "string":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=info.dtype)
