"""The Open Inference Protocol's infer call over gRPC: a ModelInferRequest into arrays, and arrays into its response.

An input comes either as typed `contents` (`fp32_contents`, `int_contents`, ...) or as bytes in
`raw_input_contents`, one entry per input in order, laid out as the REST binary extension's
(little-endian, row-major, each BYTES element after its 4-byte length). Either way it is checked
as REST's are: the datatype the model takes, its instance shape, finite numbers, and integers
within the datatype. Outputs are answered in `raw_output_contents`, as Triton answers and as
tritonclient reads them.
"""

from __future__ import annotations

import math

import numpy as np

from service.backends.signature import ModelSignature, TensorInfo
from service.errors import BadRequest
from service.protocols.tfserving_codec import check_count
from service.protocols.v2_codec import (
    DATATYPE_OF,
    InferRequest,
    RequestedOutput,
    array_from_binary,
    binary_of,
    checked_shape,
)
from service.v2_messages import ModelInferRequest, ModelInferResponse

# The typed field of InferTensorContents each datatype's values are listed in (FP16 has none: raw only).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_model_infer(request: ModelInferRequest, signature: ModelSignature, max_instances: int) -> InferRequest:
    """The request's inputs as arrays and the outputs it asks for; BadRequest says what is wrong."""
    names = [tensor.name for tensor in request.inputs]
    if len(set(names)) != len(names) or set(names) != set(signature.input_names):
        raise BadRequest(f"inputs must be exactly the model's {sorted(signature.input_names)}, got {names}")
    raw = request.raw_input_contents
    if raw and len(raw) != len(names):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(names)} inputs: give each input's bytes, in order, "
            "or none and typed contents"
        )
    infos = {info.name: info for info in signature.inputs}
    shapes = {
        tensor.name: checked_shape({"datatype": tensor.datatype, "shape": list(tensor.shape)}, infos[tensor.name])
        for tensor in request.inputs
    }
    counts = {shape[0] for shape in shapes.values()}
    if len(counts) > 1:
        raise BadRequest(f"all inputs must have the same first (batch) dimension, got {sorted(counts)}")
    count = check_count(counts.pop(), max_instances, "the batch dimension")
    inputs = {}
    for at, tensor in enumerate(request.inputs):
        info, shape = infos[tensor.name], shapes[tensor.name]
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"input {info.name!r} has both typed contents and raw_input_contents")
            inputs[info.name] = array_from_binary(raw[at], info, shape)
        else:
            inputs[info.name] = _from_contents(tensor, info, shape)
    outputs = _requested_outputs([output.name for output in request.outputs], signature)
    return InferRequest(request.id or None, inputs, count, outputs)


def encode_model_infer(model_name: str, version: int, request: InferRequest, result: dict[str, np.ndarray]) -> bytes:
    """The serialized ModelInferResponse: each requested output's shape, datatype and raw bytes."""
    response = ModelInferResponse(model_name=model_name, model_version=str(version), id=request.id or "")
    for output in request.outputs:
        array = result[output.name]
        datatype = "BYTES" if array.dtype.kind in "OSU" else DATATYPE_OF[array.dtype.name]
        response.outputs.add(name=output.name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(binary_of(array, datatype))
    return response.SerializeToString()


def _from_contents(tensor, info: TensorInfo, shape: tuple[int, ...]) -> np.ndarray:
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise BadRequest(f"input {info.name!r}: {tensor.datatype} has no typed contents; send it in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != math.prod(shape):
        raise BadRequest(
            f"input {info.name!r}: contents.{field} has {len(values)} values; shape {list(shape)} needs "
            f"{math.prod(shape)}"
        )
    if info.dtype == "string":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = np.dtype(info.dtype)
    if dtype.kind in "iu":
        wide = np.asarray(values, np.uint64 if dtype.kind == "u" else np.int64)
        limits = np.iinfo(dtype)
        if wide.size and (wide.min() < limits.min or wide.max() > limits.max):
            raise BadRequest(f"input {info.name!r} has values outside {tensor.datatype}'s [{limits.min}, {limits.max}]")
        return wide.astype(dtype).reshape(shape)
    array = np.asarray(values, dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input {info.name!r} has non-finite numbers (NaN or infinity)")
    return array


def _requested_outputs(requested: list[str], signature: ModelSignature) -> tuple[RequestedOutput, ...]:
    known = [info.name for info in signature.outputs]
    if not requested:
        return tuple(RequestedOutput(name, True) for name in known)
    if not set(requested) <= set(known) or len(set(requested)) != len(requested):
        raise BadRequest(f"outputs must name distinct outputs of the model's {known}, got {requested}")
    return tuple(RequestedOutput(name, True) for name in requested)
