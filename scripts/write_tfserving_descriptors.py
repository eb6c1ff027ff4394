"""Write service/tfserving_apis.binpb: TF Serving's message descriptors, from the installed packages.

The server builds TF Serving's gRPC messages from this file without importing TensorFlow
(service/tfserving_messages.py). Run again after upgrading tensorflow-serving-api;
tests/scripts/test_write_tfserving_descriptors.py fails while the file is stale.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DESCRIPTORS_FILE = Path(__file__).resolve().parents[1] / "service" / "tfserving_apis.binpb"
# The generated modules whose files, with every file they import, the set holds.
SOURCE_MODULES = (
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_service_pb2",  # HandleReloadConfigRequest holds a ModelServerConfig
)


def descriptor_set() -> bytes:
    """SOURCE_MODULES' files and their imports, each after the files it imports (this imports TensorFlow)."""
    from google.protobuf import descriptor_pb2

    ordered: dict[str, object] = {}

    def visit(file) -> None:
        if file.name not in ordered:
            for dependency in file.dependencies:
                visit(dependency)
            ordered[file.name] = file

    for module in SOURCE_MODULES:
        visit(importlib.import_module(module).DESCRIPTOR)
    files = descriptor_pb2.FileDescriptorSet()
    for file in ordered.values():
        file.CopyToProto(files.file.add())
    return files.SerializeToString(deterministic=True)


if __name__ == "__main__":
    DESCRIPTORS_FILE.write_bytes(descriptor_set())
    print(f"wrote {DESCRIPTORS_FILE} ({DESCRIPTORS_FILE.stat().st_size} bytes)", file=sys.stderr)
