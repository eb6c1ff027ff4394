"""Write the gRPC APIs' message descriptors the server builds its messages from, from the installed packages.

- `service/tfserving_apis.binpb`: TF Serving's, from tensorflow-serving-api (service/tfserving_messages.py);
- `service/v2_grpc_apis.binpb`: the Open Inference Protocol's `inference` package, from tritonclient
  (service/v2_messages.py).

Run again after upgrading either; tests/scripts/test_write_grpc_descriptors.py fails while a file is stale.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SERVICE = Path(__file__).resolve().parents[1] / "service"
# Each file, and the generated modules whose files, with every file they import, it holds.
DESCRIPTOR_SETS = {
    SERVICE / "tfserving_apis.binpb": (
        "tensorflow_serving.apis.predict_pb2",
        "tensorflow_serving.apis.get_model_metadata_pb2",
        "tensorflow_serving.apis.get_model_status_pb2",
        "tensorflow_serving.apis.model_service_pb2",  # HandleReloadConfigRequest holds a ModelServerConfig
    ),
    SERVICE / "v2_grpc_apis.binpb": ("tritonclient.grpc.service_pb2",),  # with model_config.proto
}


def descriptor_set(modules: tuple[str, ...]) -> bytes:
    """The modules' files and their imports, each after the files it imports (TF Serving's import TensorFlow)."""
    from google.protobuf import descriptor_pb2

    ordered: dict[str, object] = {}

    def visit(file) -> None:
        if file.name not in ordered:
            for dependency in file.dependencies:
                visit(dependency)
            ordered[file.name] = file

    for module in modules:
        visit(importlib.import_module(module).DESCRIPTOR)
    files = descriptor_pb2.FileDescriptorSet()
    for file in ordered.values():
        file.CopyToProto(files.file.add())
    return files.SerializeToString(deterministic=True)


if __name__ == "__main__":
    for path, modules in DESCRIPTOR_SETS.items():
        path.write_bytes(descriptor_set(modules))
        print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)
