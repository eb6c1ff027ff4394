"""The served model: load it, compile its forward pass for fixed batch sizes, warm it up.

Requests are never run with `model.predict` (tens of milliseconds of overhead per call):
the forward pass is one `tf.function` with an `input_signature` whose batch dimension is
unknown, so it is traced once, and every batch is padded up to one of a few sizes so the
kernels for those shapes are built during warm-up, before the worker reports ready.
TensorFlow is imported inside functions only, so the rest of the service imports this
module without it.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

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
    """The model refused these inputs (TensorFlow's InvalidArgumentError): the client's to fix."""


class ServedModel:
    """A forward pass over padded batches, with the request-level split and merge around it.

    `forward` takes and returns arrays keyed by tensor name whose first dimension is one
    of `batch_sizes`; `predict` is what the batcher calls.
    """

    def __init__(
        self, name: str, version: int, signature: ModelSignature, forward: Forward, batch_sizes: Sequence[int]
    ):
        self.name = name
        self.version = version
        self.signature = signature
        self.batch_sizes = tuple(sorted(batch_sizes))
        self._forward = forward
        self.warm_up_seconds: dict[int, float] = {}

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
            merged = {
                info.name: np.concatenate([payloads[p][info.name] for p in positions]) for info in self.signature.inputs
            }
            outputs = self.run(merged)
            start = 0
            for p in positions:
                count = len(payloads[p][self.signature.inputs[0].name])
                results[p] = {name: array[start : start + count] for name, array in outputs.items()}
                start += count
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

    def warm_up(self, repeats: int = 3, memory_check_passes: int = 0) -> dict[int, float]:
        """Run every padded batch size so no shape is first built while serving; time each.

        Returns the median forward-pass time per batch size after the first (building) call.
        With `memory_check_passes` (on a GPU: the worker's concurrent batches), each size is
        first run that many times at once with GPU_BATCH_MARGIN more rows; the first size
        that runs out of device memory ends the warm-up, and it and larger sizes are left out
        of the answer (the largest size that fits is then the largest key).
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
            self._forward(sample)
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                self._forward(sample)
                timings.append(time.perf_counter() - started)
            self.warm_up_seconds[size] = statistics.median(timings)
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
        out_of_memory = [error for error in errors if _is_out_of_memory(error)]
        if len(out_of_memory) < len(errors):
            raise next(error for error in errors if not _is_out_of_memory(error))
        return not out_of_memory


def load_served_model(path: str, name: str, version: int, batch_sizes: Sequence[int]) -> ServedModel:
    """Load a Keras `.keras`/`.h5` file or a SavedModel directory and compile its forward pass.

    Raises ModelLoadError if the path is missing or the model's inputs cannot be batched.
    """
    if not os.path.exists(path):
        raise ModelLoadError(f"MODEL_PATH={path!r} does not exist; build the demo model with `make demo-model`")
    if os.path.isdir(path):
        signature, forward = _compile_saved_model(path)
    else:
        signature, forward = _compile_keras_file(path)
    return ServedModel(name, version, signature, forward, batch_sizes)


def _compile_keras_file(path: str) -> tuple[ModelSignature, Forward]:
    import keras
    import tensorflow as tf

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:
        raise ModelLoadError(f"cannot load Keras model {path!r}: {error}") from error
    inputs = tuple(
        TensorInfo(tensor.name, _dtype_name(tensor.dtype), _instance_shape(tensor.shape, tensor.name))
        for tensor in model.inputs
    )
    # Functional models name their outputs; Sequential ones only through the producing layer.
    output_names = list(
        getattr(model, "output_names", None) or [t._keras_history.operation.name for t in model.outputs]
    )
    outputs = tuple(
        TensorInfo(name, _dtype_name(tensor.dtype), _instance_shape(tensor.shape, name))
        for name, tensor in zip(output_names, model.outputs, strict=True)
    )
    specs = [tf.TensorSpec((None, *info.instance_shape), _tf_dtype(info.dtype), name=info.name) for info in inputs]

    @tf.function(input_signature=specs)
    def compiled(*tensors):
        feed = tensors[0] if len(tensors) == 1 else {info.name: t for info, t in zip(inputs, tensors, strict=True)}
        result = model(feed, training=False)
        if isinstance(result, dict):
            return result
        if not isinstance(result, list | tuple):
            result = [result]
        return dict(zip(output_names, result, strict=True))

    return ModelSignature(inputs, outputs), _numpy_forward(compiled, inputs, keep_alive=model)


def _compile_saved_model(path: str) -> tuple[ModelSignature, Forward]:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
        serving = loaded.signatures["serving_default"]
    except KeyError:
        raise ModelLoadError(f"SavedModel {path!r} has no 'serving_default' signature") from None
    except Exception as error:
        raise ModelLoadError(f"cannot load SavedModel {path!r}: {error}") from error
    _, input_specs = serving.structured_input_signature
    inputs = tuple(
        TensorInfo(name, _dtype_name(spec.dtype), _instance_shape(spec.shape, name))
        for name, spec in sorted(input_specs.items())
    )
    outputs = tuple(
        TensorInfo(name, _dtype_name(spec.dtype), _instance_shape(spec.shape, name))
        for name, spec in sorted(serving.structured_outputs.items())
    )
    specs = [tf.TensorSpec((None, *info.instance_shape), _tf_dtype(info.dtype), name=info.name) for info in inputs]

    @tf.function(input_signature=specs)
    def compiled(*tensors):
        return serving(**{info.name: t for info, t in zip(inputs, tensors, strict=True)})

    return ModelSignature(inputs, outputs), _numpy_forward(compiled, inputs, keep_alive=loaded)


def _numpy_forward(compiled, inputs: tuple[TensorInfo, ...], keep_alive) -> Forward:
    def forward(arrays: Arrays) -> Arrays:
        forward.keep_alive = keep_alive  # the model's variables must outlive the function
        try:
            result = compiled(*(arrays[info.name] for info in inputs))
        except Exception as error:
            if _is_invalid_argument(error):
                raise InputRejected(_without_graph_noise(error.message)) from error
            raise
        return {name: tensor.numpy() for name, tensor in result.items()}

    return forward


_GRAPH_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[{{node")


def _without_graph_noise(message: str) -> str:
    """The lines of a TF error that speak of the input, not of the graph that raised it."""
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_GRAPH_NOISE)]
    return "; ".join(useful) or message


def _is_invalid_argument(error: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.InvalidArgumentError)


def _is_out_of_memory(error: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.ResourceExhaustedError)


def _instance_shape(shape, name: str) -> tuple[int | None, ...]:
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape) if shape is not None else None
    if not dims:
        raise ModelLoadError(f"tensor {name!r} has no batch dimension (shape {shape}); it cannot be batched")
    return tuple(None if dim is None else int(dim) for dim in dims[1:])


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    return "string" if name in ("string", "str") else name


def _tf_dtype(dtype_name: str):
    import tensorflow as tf

    return tf.string if dtype_name == "string" else tf.as_dtype(dtype_name)


def _pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row up to `size` rows: valid input for any dtype, discarded after the pass."""
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def _sample_batch(info: TensorInfo, size: int) -> np.ndarray:
    shape = (size, *(1 if dim is None else dim for dim in info.instance_shape))
    if info.dtype == "string":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=info.dtype)
