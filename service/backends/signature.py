"""The served model's inputs and outputs, described without TensorFlow.

The codec validates requests against these descriptions and the metadata route reports
them, so both work in tests and in the master without importing TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorInfo:
    """One named input or output tensor; `instance_shape` excludes the batch dimension.

    `None` in `instance_shape` is a dimension of any size; `dtype` is a NumPy dtype name
    (`float32`, `int64`, `bool`) or `string`.
    """

    name: str
    dtype: str
    instance_shape: tuple[int | None, ...]

    def describe(self) -> dict:
        """TF Serving's metadata form: -1 for any size, the batch dimension included."""
        dims = [-1] + [-1 if dim is None else dim for dim in self.instance_shape]
        return {"name": self.name, "dtype": self.dtype, "shape": dims}


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.inputs)


# TF Serving names dtypes by their protobuf enum in metadata answers.
TF_DTYPE_ENUMS = {
    "float16": "DT_HALF",
    "bfloat16": "DT_BFLOAT16",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
    "string": "DT_STRING",
}


def describe_metadata(name: str, version: int, signature: ModelSignature) -> dict:
    """The body of TF Serving's `GET /v1/models/<name>/metadata`, so its clients parse it unchanged."""

    def tensors(infos: tuple[TensorInfo, ...]) -> dict:
        return {
            info.name: {
                "dtype": TF_DTYPE_ENUMS.get(info.dtype, "DT_INVALID"),
                "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in info.describe()["shape"]]},
                "name": info.name,
            }
            for info in infos
        }

    serving_default = {
        "inputs": tensors(signature.inputs),
        "outputs": tensors(signature.outputs),
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": {"serving_default": serving_default}}},
    }
