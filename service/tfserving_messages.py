"""TF Serving's messages (its gRPC API and its model config file), built without importing TensorFlow.

`tensorflow_serving.apis` and `tensorflow.core.framework` hold the generated message classes,
but importing either runs `tensorflow/__init__.py`, which loads all of TensorFlow: some 1 GB
of address space that a worker serving ONNX (service/backends/onnx.py) must not pay for.
So the messages' descriptors are kept in `tfserving_apis.binpb`, a FileDescriptorSet, and the
classes are built here from a private descriptor pool. They are the same messages on the wire;
`scripts/write_tfserving_descriptors.py` writes the file from the installed packages, and a test
checks that it still matches them.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

DESCRIPTORS_FILE = Path(__file__).with_name("tfserving_apis.binpb")


def _pool() -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS_FILE.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # written dependencies first
        pool.Add(file)
    return pool


_POOL = _pool()


def _message(full_name: str) -> type:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


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
