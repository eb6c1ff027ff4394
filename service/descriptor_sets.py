"""Protocol Buffers message classes built from a committed FileDescriptorSet, without the package that generated it.

TF Serving's messages come with TensorFlow, whose import costs about 1 GB of address space, and
the Open Inference Protocol's with tritonclient, a client the server does not depend on. So the
server keeps their descriptors (`*.binpb`, written by `scripts/write_grpc_descriptors.py`, checked
against the installed packages by a test) and builds the classes here, each set in a private
pool. They are the same messages on the wire.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def load_pool(path: Path) -> descriptor_pool.DescriptorPool:
    """A pool of the set's files, which are written dependencies first."""
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def message_class(pool: descriptor_pool.DescriptorPool, full_name: str) -> type:
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
