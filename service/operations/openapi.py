"""The OpenAPI 3.1 document of the service, completed with the served model's tensors.

The routes, errors and headers are written by hand in openapi.yaml: the wire format is TF
Serving's, fixed, and reads better as a document than as decorators. What depends on the
model is filled in here from its signature: the name in the paths, the JSON shape of one
instance and of one prediction, and the largest request, so a client (or a fuzzer) can
tell a valid body from an invalid one by the document alone.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import yaml

from service.backends.signature import ModelSignature, TensorInfo

TEMPLATE_PATH = Path(__file__).with_name("openapi.yaml")


@functools.cache
def _template() -> dict:
    return yaml.safe_load(TEMPLATE_PATH.read_text())


def openapi_document(
    model_name: str,
    model_version: int,
    signature: ModelSignature,
    max_instances: int,
    open_paths=None,
    max_job_instances: int | None = None,
) -> dict:
    """The document for this model; a new dict each call, safe to change.

    `open_paths`, when given, says API keys are on and which paths need none. A job's body is
    a predict body of up to `max_job_instances` (MAX_JOB_INSTANCES) instances.
    """
    document = copy.deepcopy(_template())
    document["info"]["description"] += f"\nThis server serves model `{model_name}`, version {model_version}."
    parameters = document["components"]["parameters"]
    parameters["ModelName"]["schema"] = {"enum": [model_name]}
    parameters["ModelVersion"]["schema"] = {"enum": [model_version]}
    schemas = document["components"]["schemas"]
    schemas["Instance"] = _keyed(signature.inputs, _tensor_schema)
    schemas["ColumnarInputs"] = _keyed(signature.inputs, lambda info: _batch_schema(info, max_instances))
    schemas["Prediction"] = _keyed(signature.outputs, _tensor_schema)
    schemas["ColumnarOutputs"] = _keyed(signature.outputs, lambda info: _batch_schema(info, max_instances))
    bodies = document["components"]["requestBodies"]
    bodies["Job"] = {**copy.deepcopy(bodies["Predict"]), "description": bodies["Job"]["description"]}
    _limit_instances(bodies["Predict"], max_instances, {"$ref": "#/components/schemas/ColumnarInputs"})
    job_limit = max_job_instances or max_instances
    _limit_instances(bodies["Job"], job_limit, _keyed(signature.inputs, lambda info: _batch_schema(info, job_limit)))
    result = document["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]["application/json"]
    result["schema"]["oneOf"][1]["properties"]["outputs"] = _keyed(
        signature.outputs, lambda info: _batch_schema(info, job_limit)
    )
    if open_paths is not None:
        _require_api_keys(document, open_paths)
    return document


def _limit_instances(body: dict, max_instances: int, columnar_inputs: dict) -> None:
    for body_schema in body["content"]["application/json"]["schema"]["oneOf"]:
        if "instances" in body_schema["properties"]:
            body_schema["properties"]["instances"]["maxItems"] = max_instances
        else:
            body_schema["properties"]["inputs"] = columnar_inputs


def _require_api_keys(document: dict, open_paths) -> None:
    document["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    document["security"] = [{"bearer": []}, {"apiKey": []}]
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path in open_paths:
                operation["security"] = []
            else:
                operation["responses"] = {
                    **operation["responses"],
                    "401": {"$ref": "#/components/responses/Error401"},
                    "403": {"$ref": "#/components/responses/Error403"},
                }


def _keyed(infos: tuple[TensorInfo, ...], schema_of) -> dict:
    """A lone tensor is sent bare; several are an object keyed by their names (TF Serving's rule)."""
    if len(infos) == 1:
        return schema_of(infos[0])
    return {
        "type": "object",
        "required": [info.name for info in infos],
        "additionalProperties": False,
        "properties": {info.name: schema_of(info) for info in infos},
    }


def _batch_schema(info: TensorInfo, max_instances: int) -> dict:
    return {"type": "array", "minItems": 1, "maxItems": max_instances, "items": _tensor_schema(info)}


def _tensor_schema(info: TensorInfo) -> dict:
    """Nested arrays of one instance's shape, down to the JSON type of its dtype."""
    schema: dict = {"type": _json_type(info.dtype), **_range(info.dtype)}
    for dim in reversed(info.instance_shape):
        schema = {"type": "array", "items": schema}
        if dim is not None:
            schema.update(minItems=dim, maxItems=dim)
    return schema


def _range(dtype: str) -> dict:
    """The values the dtype holds, as the codec checks them: 1e300 is a JSON number but no float32."""
    try:
        limits = np.iinfo(dtype) if dtype.startswith(("int", "uint")) else np.finfo(dtype)
    except (TypeError, ValueError):  # string, bool, or a dtype NumPy does not know (bfloat16)
        return {}
    as_json = int if isinstance(limits, np.iinfo) else float
    return {"minimum": as_json(limits.min), "maximum": as_json(limits.max)}


def _json_type(dtype: str) -> str:
    if dtype in ("string", "bool"):
        return "string" if dtype == "string" else "boolean"
    return "integer" if dtype.startswith(("int", "uint")) else "number"
