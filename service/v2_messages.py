"""The Open Inference Protocol's gRPC messages (KServe V2, Triton's `inference.GRPCInferenceService`).

Built from `v2_grpc_apis.binpb` (service/descriptor_sets.py): tritonclient, which generated them,
is a client the server does not depend on.
"""

from __future__ import annotations

from pathlib import Path

from service.descriptor_sets import load_pool, message_class

DESCRIPTORS_FILE = Path(__file__).with_name("v2_grpc_apis.binpb")
_POOL = load_pool(DESCRIPTORS_FILE)


def _message(name: str) -> type:
    return message_class(_POOL, f"inference.{name}")


ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
ModelStreamInferResponse = _message("ModelStreamInferResponse")
ModelConfigRequest = _message("ModelConfigRequest")
ModelConfigResponse = _message("ModelConfigResponse")
ModelStatisticsRequest = _message("ModelStatisticsRequest")
ModelStatisticsResponse = _message("ModelStatisticsResponse")
RepositoryIndexRequest = _message("RepositoryIndexRequest")
RepositoryIndexResponse = _message("RepositoryIndexResponse")
RepositoryModelLoadRequest = _message("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = _message("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = _message("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = _message("RepositoryModelUnloadResponse")
InferTensorContents = _message("InferTensorContents")
