"""TF Serving's messages (its gRPC API and its model config file), built without importing TensorFlow.

`tensorflow_serving.apis` and `tensorflow.core.framework` hold the generated message classes,
but importing either runs `tensorflow/__init__.py`, which loads all of TensorFlow, which a worker
serving ONNX (service/backends/onnx.py) must not pay for: service/descriptor_sets.py.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from service.descriptor_sets import load_pool, message_class

DESCRIPTORS_FILE = Path(__file__).with_name("tfserving_apis.binpb")
_POOL = load_pool(DESCRIPTORS_FILE)


def _message(full_name: str) -> type:
    return message_class(_POOL, full_name)


PredictRequest = _message("tensorflow.serving.PredictRequest")
PredictResponse = _message("tensorflow.serving.PredictResponse")
GetModelMetadataRequest = _message("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse = _message("tensorflow.serving.GetModelMetadataResponse")
SignatureDefMap = _message("tensorflow.serving.SignatureDefMap")
GetModelStatusRequest = _message("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = _message("tensorflow.serving.GetModelStatusResponse")
ModelSpec = _message("tensorflow.serving.ModelSpec")
TensorProto = _message("tensorflow.TensorProto")
ModelServerConfig = _message("tensorflow.serving.ModelServerConfig")  # MODEL_CONFIG_FILE, in text format
ReloadConfigRequest = _message("tensorflow.serving.ReloadConfigRequest")
ReloadConfigResponse = _message("tensorflow.serving.ReloadConfigResponse")
DataType = EnumTypeWrapper(_POOL.FindEnumTypeByName("tensorflow.DataType"))
