"""The Open Inference Protocol's (KServe V2) infer request and response, with binary tensors.

A tensor is `{name, shape, datatype, data}`, `data` row-major, flat or nested. The first
dimension is the batch: a request's inputs share it, and it is the instance count the batcher
splits and merges. JSON values are checked as TF Serving's are (tfserving_codec.checked_input):
by their JSON type against the model's dtype, never coerced.

With the binary tensor data extension, the JSON header is followed by the tensors' bytes; the
`Inference-Header-Content-Length` header gives the JSON's length. An input that declares
`parameters.binary_data_size` has no `data`: its bytes are the next that many of the body,
little-endian and row-major, each BYTES element prefixed with its length in 4 bytes. An output
is sent the same way when the request asks (`parameters.binary_data` on a requested output, or
`binary_data_output` for all). Binary tensors are what make V2 cheap for large inputs: no
number is written or parsed as text.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import orjson

from service.backends.signature import ModelSignature, TensorInfo
from service.client_numbers import whole_number
from service.errors import BadRequest
from service.protocols.tfserving_codec import check_count, checked_input, json_values, parse_json

# The protocol's datatypes and the model dtypes (signature.TensorInfo) they carry.
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "string",
}
DATATYPE_OF = {dtype: datatype for datatype, dtype in DATATYPES.items()}
_LENGTH = struct.Struct("<I")  # a BYTES element's length, before its bytes


def datatype_of(info: TensorInfo) -> str:
    """The datatype a tensor of the model's is sent as; a dtype V2 cannot carry (bfloat16) has none."""
    return DATATYPE_OF.get(info.dtype, "")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request: its inputs with a leading batch dimension of `count`, and what to answer."""

    id: str | None
    inputs: dict[str, np.ndarray]
    count: int
    outputs: tuple[RequestedOutput, ...]


def decode_infer_request(
    body: bytes, header_length: str | None, signature: ModelSignature, max_instances: int
) -> InferRequest:
    """Parse an infer body; BadRequest says what is wrong with it.

    `header_length` is the request's Inference-Header-Content-Length header: the JSON's length.
    """
    header, binary = _split(body, header_length)
    document = parse_json(header) if header else None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise BadRequest("an infer request is a JSON object with a non-empty 'inputs' list of tensors")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _parameters(document, "the request")
    may_hold_booleans = b"true" in header or b"false" in header
    tensors = _inputs_by_name(document["inputs"], signature)
    infos = {info.name: info for info in signature.inputs}
    shapes = {name: checked_shape(tensor, infos[name]) for name, tensor in tensors.items()}
    counts = {shape[0] for shape in shapes.values()}
    if len(counts) > 1:
        raise BadRequest(f"all inputs must have the same first (batch) dimension, got {sorted(counts)}")
    count = check_count(counts.pop(), max_instances, "the batch dimension")
    inputs, offset = {}, 0
    for name, tensor in tensors.items():  # binary tensors follow the header in the request's order
        info, shape = infos[name], shapes[name]
        size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
        if size is None:
            inputs[name] = _from_json(tensor, info, shape, may_hold_booleans)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise BadRequest(
                f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary) - offset} binary bytes "
                "left after the JSON header (Inference-Header-Content-Length)"
            )
        inputs[name] = array_from_binary(binary[offset : offset + size], info, shape)
        offset += size
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary) - offset} bytes after the tensors its inputs declare")
    outputs = _requested_outputs(document, signature, parameters.get("binary_data_output", False))
    return InferRequest(request_id, inputs, count, outputs)


def encode_infer_response(
    model_name: str, version: int, request: InferRequest, result: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The answer's body, and the length of its JSON header when binary outputs follow it (else None)."""
    tensors, chunks = [], []
    for output in request.outputs:
        array = result[output.name]
        datatype = "BYTES" if array.dtype.kind in "OSU" else DATATYPE_OF[array.dtype.name]
        tensor = {"name": output.name, "datatype": datatype, "shape": list(array.shape)}
        if output.binary:
            chunk = binary_of(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = json_values(array.reshape(-1))
        tensors.append(tensor)
    answer = {"model_name": model_name, "model_version": str(version), "outputs": tensors}
    if request.id is not None:
        answer = {"id": request.id, **answer}
    header = orjson.dumps(answer)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    length = whole_number(header_length, len(body))
    if length is None:
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length[:40]!r} is not a byte count within the body's {len(body)}"
        )
    return body[:length], body[length:]


def _parameters(document: dict, what: str) -> dict:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f"'parameters' of {what} must be an object")
    return parameters


def _inputs_by_name(tensors: list, signature: ModelSignature) -> dict[str, dict]:
    by_name: dict[str, dict] = {}
    for tensor in tensors:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest("each input must be an object with a 'name', 'shape', 'datatype' and 'data'")
        if tensor["name"] in by_name:
            raise BadRequest(f"input {tensor['name']!r} is given twice")
        by_name[tensor["name"]] = tensor
    if set(by_name) != set(signature.input_names):
        raise BadRequest(f"'inputs' must be exactly the model's {sorted(signature.input_names)}, got {sorted(by_name)}")
    return by_name


def checked_shape(tensor: dict, info: TensorInfo) -> tuple[int, ...]:
    """The tensor's declared shape, checked against its datatype and the model's instance shape."""
    if tensor.get("datatype") != datatype_of(info):
        raise BadRequest(
            f"input {info.name!r} has datatype {tensor.get('datatype')!r}; the model takes {datatype_of(info)}"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape)
    ):
        raise BadRequest(f"input {info.name!r}: 'shape' must be a list of sizes, the batch dimension first")
    instance = shape[1:]
    if len(instance) != len(info.instance_shape) or any(
        want is not None and got != want for got, want in zip(instance, info.instance_shape, strict=True)
    ):
        expected = ["batch", *("any" if dim is None else dim for dim in info.instance_shape)]
        raise BadRequest(f"input {info.name!r} has shape {shape}; the model takes {expected}")
    return tuple(shape)


def _from_json(tensor: dict, info: TensorInfo, shape: tuple[int, ...], may_hold_booleans: bool) -> np.ndarray:
    data = tensor.get("data")
    if not isinstance(data, list):
        raise BadRequest(f"input {info.name!r} needs 'data' (a list), or parameters.binary_data_size")
    try:
        array = np.asarray(data)
    except ValueError:
        raise BadRequest(f"input {info.name!r}: 'data' is ragged") from None
    if array.size != math.prod(shape):
        needed = math.prod(shape)
        raise BadRequest(f"input {info.name!r}: 'data' has {array.size} values; shape {list(shape)} needs {needed}")
    return checked_input(array.reshape(shape), info, shape[0], may_hold_booleans, lambda: data)


def array_from_binary(chunk: bytes, info: TensorInfo, shape: tuple[int, ...]) -> np.ndarray:
    values = math.prod(shape)
    if info.dtype == "string":
        elements, at = [], 0
        while at < len(chunk):
            if at + _LENGTH.size > len(chunk):
                raise BadRequest(f"input {info.name!r}: a BYTES element's 4-byte length is cut short")
            (length,) = _LENGTH.unpack_from(chunk, at)
            at += _LENGTH.size
            if at + length > len(chunk):
                raise BadRequest(f"input {info.name!r}: a BYTES element is longer than the bytes left")
            elements.append(chunk[at : at + length])
            at += length
        if len(elements) != values:
            raise BadRequest(
                f"input {info.name!r} has {len(elements)} BYTES elements; shape {list(shape)} needs {values}"
            )
        array = np.empty(values, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    dtype = np.dtype(info.dtype).newbyteorder("<")
    if len(chunk) != values * dtype.itemsize:
        raise BadRequest(
            f"input {info.name!r}: {len(chunk)} binary bytes; shape {list(shape)} of {datatype_of(info)} needs "
            f"{values * dtype.itemsize}"
        )
    array = np.frombuffer(chunk, dtype).reshape(shape).astype(info.dtype)
    if dtype.kind == "b" and not np.isin(np.frombuffer(chunk, np.uint8), (0, 1)).all():
        raise BadRequest(f"input {info.name!r}: BOOL bytes must be 0 or 1")
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input {info.name!r} has non-finite numbers (NaN or infinity)")
    return array


def _requested_outputs(document: dict, signature: ModelSignature, binary_default) -> tuple[RequestedOutput, ...]:
    if not isinstance(binary_default, bool):
        raise BadRequest("parameters.binary_data_output must be true or false")
    known = [info.name for info in signature.outputs]
    requested = document.get("outputs")
    if requested is None:
        return tuple(RequestedOutput(name, binary_default) for name in known)
    if not isinstance(requested, list) or not requested:
        raise BadRequest("'outputs' must be a non-empty list of {name, parameters} objects")
    outputs: list[RequestedOutput] = []
    for output in requested:
        if not isinstance(output, dict) or output.get("name") not in known:
            raise BadRequest(f"each requested output must name one of the model's outputs {known}")
        if any(chosen.name == output["name"] for chosen in outputs):
            raise BadRequest(f"output {output['name']!r} is requested twice")
        binary = _parameters(output, f"output {output['name']!r}").get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"output {output['name']!r}: parameters.binary_data must be true or false")
        outputs.append(RequestedOutput(output["name"], binary))
    return tuple(outputs)


def binary_of(array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    parts = []
    for value in array.reshape(-1).tolist():
        data = value if isinstance(value, bytes) else str(value).encode()
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)
