"""The TensorFlow backend: Keras files and SavedModels, compiled for fixed batch sizes.

Requests are never run with `model.predict` (tens of milliseconds of overhead per call):
the forward pass is one `tf.function` with an `input_signature` whose batch dimension is
unknown, so it is traced once; `ServedModel` pads every batch up to one of a few sizes, whose
kernels its warm-up builds before the worker reports ready. TensorFlow is imported inside
functions only, so the Gunicorn master and the rest of the service import this module without it.
"""

from __future__ import annotations

import os
import sys
import zipfile
from contextlib import nullcontext

from service.backends.base import Arrays, Forward, InputRejected, ModelLoadError, OutOfDeviceMemory
from service.backends.keras_weights import load_keras_gently, worth_loading_gently
from service.backends.signature import ModelSignature, TensorInfo

KERAS_SUFFIXES = (".keras", ".h5")


class TensorFlowBackend:
    """Keras `.keras`/`.h5` files and SavedModel directories."""

    name = "tensorflow"
    runtime_module = "tensorflow"
    platform = "tensorflow_savedmodel"  # Keras files too: the Open Inference Protocol names no Keras platform

    def can_load(self, path: str) -> bool:
        return os.path.isdir(path) or path.endswith(KERAS_SUFFIXES)

    def configure(
        self,
        intra_op_threads: int,
        inter_op_threads: int,
        gpu_memory_limit_mb: int | None,
        cpu_lanes: int = 1,
        tf=None,
    ) -> list[str]:
        """Set TF's thread pools, its CPU lanes and the GPU memory limit; must run before TF's first op.

        With `cpu_lanes` > 1 on a CPU worker, the CPU is that many logical devices, each with a
        pool of `intra_op_threads` of its own (service/backends/lanes.py): TF gives each device its
        own pool when TF_OVERRIDE_GLOBAL_THREADPOOL is set as it creates its first device.
        Returns the logical devices TF then sees, e.g. ["/device:CPU:0", "/device:GPU:0"].
        Raises RuntimeError if a memory limit is asked for but TF sees no GPU.
        """
        if tf is None:
            import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
        if cpu_lanes > 1 and gpu_memory_limit_mb is None:
            os.environ["TF_OVERRIDE_GLOBAL_THREADPOOL"] = "1"
            cpus = tf.config.list_physical_devices("CPU")
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_lanes)]
            )
        if gpu_memory_limit_mb is not None:
            gpus = tf.config.list_physical_devices("GPU")
            if not gpus:
                raise RuntimeError("this worker was given a GPU but TensorFlow sees none (is CUDA installed?)")
            tf.config.set_logical_device_configuration(
                gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_limit_mb)]
            )
        return [device.name for device in tf.config.list_logical_devices()]

    def load(self, path: str, device: str | None = None, gently: bool = False) -> tuple[ModelSignature, Forward]:
        """`device`: the CPU lane whose pool runs the model's passes, where its variables live (None: TF's default).

        `gently`: other models serve meanwhile; a large `.keras` file's weights are then read by a
        child process and assigned in slices (service/backends/keras_weights.py).
        """
        if os.path.isdir(path):
            return _compile_saved_model(path, device)
        return _compile_keras_file(path, device, gently and worth_loading_gently(path))


def _on(device: str | None):
    """The model's ops and variables on `device`, or wherever TF puts them."""
    import tensorflow as tf

    return tf.device(device) if device else nullcontext()


def _compile_keras_file(path: str, device: str | None, gently: bool = False) -> tuple[ModelSignature, Forward]:
    if path.endswith(".keras"):
        _check_keras_archive(path)  # before importing TensorFlow: a refused file costs nothing
    import keras
    import tensorflow as tf

    try:
        with _on(device):
            model = load_keras_gently(path) if gently else keras.models.load_model(path, compile=False)
    except ModelLoadError:
        raise
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
        with _on(device):
            result = model(feed, training=False)
        if isinstance(result, dict):
            return result
        if not isinstance(result, list | tuple):
            result = [result]
        return dict(zip(output_names, result, strict=True))

    return ModelSignature(inputs, outputs), _numpy_forward(compiled, inputs, keep_alive=model)


def _check_keras_archive(path: str) -> None:
    """ModelLoadError with the archive's own fault: Keras says "File not found" of any file it cannot unzip.

    A `.keras` file is a zip archive; one truncated or still being copied has no readable central
    directory, and one damaged inside fails its members' checksums.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise ModelLoadError(
            f"{path!r} ({size:,} bytes) is not a readable .keras archive: {error}; truncated, or still being written?"
        ) from None
    if damaged is not None:
        raise ModelLoadError(f"{path!r} is a damaged .keras archive: its member {damaged!r} fails its checksum")


def _compile_saved_model(path: str, device: str | None) -> tuple[ModelSignature, Forward]:
    import tensorflow as tf

    try:
        with _on(device):
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
        with _on(device):
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
            if _is_out_of_memory(error):
                raise OutOfDeviceMemory(error.message) from error
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
