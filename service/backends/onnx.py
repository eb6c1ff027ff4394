"""The ONNX Runtime backend: `.onnx` files, run by one InferenceSession per worker.

ONNX Runtime sizes its thread pool to the host's physical cores, whatever the container's
CPU quota or OMP_NUM_THREADS say, and its threads spin while they wait for work: with several
workers on the same cores they would take each other's CPU. So each session gets the worker's
share from the planner (`configure`) and does not spin. `onnxruntime` is imported inside
functions only, and nothing here imports TensorFlow: a worker serving ONNX never loads it.
"""

from __future__ import annotations

import os

import numpy as np

from service.backends.base import Arrays, Forward, InputRejected, ModelLoadError, OutOfDeviceMemory
from service.backends.signature import ModelSignature, TensorInfo

ONNX_SUFFIX = ".onnx"

# ONNX's element types (as onnxruntime names them) and the NumPy dtype names the service uses.
DTYPES = {
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


class OnnxBackend:
    """ONNX models through onnxruntime, on the CPU or (with onnxruntime-gpu) the worker's GPU."""

    name = "onnx"
    runtime_module = "onnxruntime"
    platform = "onnxruntime_onnx"  # the Open Inference Protocol's name for it, as Triton reports it

    def __init__(self):
        self._threads = (0, 0)  # 0: onnxruntime's own choice, outside a planned worker (tests, scripts)
        self._providers: list = ["CPUExecutionProvider"]

    def can_load(self, path: str) -> bool:
        return path.endswith(ONNX_SUFFIX)

    def configure(
        self,
        intra_op_threads: int,
        inter_op_threads: int,
        gpu_memory_limit_mb: int | None,
        cpu_lanes: int = 1,
        ort=None,
    ) -> list[str]:
        """Remember the thread counts and device for the sessions this worker creates; returns the providers.

        `cpu_lanes` changes nothing: each session has thread pools of its own already.

        On a GPU worker the CUDA provider comes first, on device 0: the worker's only visible GPU
        (`pin_visible_gpu` set CUDA_VISIBLE_DEVICES), with the worker's share of its memory.
        Raises RuntimeError if a GPU is given but onnxruntime has no CUDA provider.
        """
        if ort is None:
            import onnxruntime as ort
        self._threads = (intra_op_threads, inter_op_threads)
        self._providers = ["CPUExecutionProvider"]
        if gpu_memory_limit_mb is not None:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "this worker was given a GPU but onnxruntime has no CUDA provider (install onnxruntime-gpu)"
                )
            cuda = {
                "device_id": 0,
                "gpu_mem_limit": gpu_memory_limit_mb << 20,
                "arena_extend_strategy": "kSameAsRequested",
            }
            self._providers.insert(0, ("CUDAExecutionProvider", cuda))
        return [provider if isinstance(provider, str) else provider[0] for provider in self._providers]

    def load(
        self, path: str, device: str | None = None, gently: bool = False, ort=None
    ) -> tuple[ModelSignature, Forward]:
        """`device` and `gently` change nothing: each session has thread pools of its own (service/backends/lanes.py),
        and onnxruntime builds it in C++."""
        if ort is None:
            import onnxruntime as ort
        if not os.path.isfile(path):
            raise ModelLoadError(f"{path!r} is not an ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self._threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=self._providers)
        except Exception as error:
            raise ModelLoadError(f"cannot load ONNX model {path!r}: {error}") from error
        signature = ModelSignature(
            tuple(_tensor_info(node) for node in session.get_inputs()),
            tuple(_tensor_info(node) for node in session.get_outputs()),
        )
        return signature, _session_forward(session, signature)


def _session_forward(session, signature: ModelSignature) -> Forward:
    output_names = [info.name for info in signature.outputs]
    string_inputs = {info.name for info in signature.inputs if info.dtype == "string"}

    def forward(arrays: Arrays) -> Arrays:
        feed = {name: _as_text(array) if name in string_inputs else array for name, array in arrays.items()}
        try:
            results = session.run(output_names, feed)
        except Exception as error:
            kind = type(error).__name__
            if kind == "InvalidArgument":
                raise InputRejected(_without_prefix(str(error))) from error
            if "Failed to allocate memory" in str(error) or "out of memory" in str(error).lower():
                raise OutOfDeviceMemory(str(error)) from error
            raise
        return dict(zip(output_names, results, strict=True))

    return forward


def _tensor_info(node) -> TensorInfo:
    """An input or output of the graph; its first dimension must be the batch, of any size."""
    dtype = DTYPES.get(node.type)
    if dtype is None:
        raise ModelLoadError(f"tensor {node.name!r} has type {node.type}, which the service does not serve")
    shape = list(node.shape or [])
    if not shape or isinstance(shape[0], int):
        raise ModelLoadError(
            f"tensor {node.name!r} has shape {shape}: its first dimension must be a batch of any size "
            "(export with a dynamic batch dimension)"
        )
    return TensorInfo(node.name, dtype, tuple(dim if isinstance(dim, int) else None for dim in shape[1:]))


def _as_text(array):
    """onnxruntime takes string tensors as str; the protocols' decoders give bytes, as TensorFlow takes them."""
    return np.vectorize(lambda value: value.decode() if isinstance(value, bytes) else value, otypes=[object])(array)


def _without_prefix(message: str) -> str:
    """onnxruntime's message without its "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : " prefix, on one line."""
    text = message.split(" : ", 3)[-1] if message.startswith("[ONNXRuntimeError]") else message
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
