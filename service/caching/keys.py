"""What identifies a cached answer: the model's identity and one instance's dtype, shape and bytes.

Keys are per instance, so a request hits on each of its rows that any earlier request held,
whatever else it carried (request ids, other rows, its layout). The model's part holds its
name, version and a digest of its files, so a new version, or a file replaced under the same
version, never reads an answer of the old one, in this worker or in a shared tier.
"""

from __future__ import annotations

import hashlib

import numpy as np

from service.backends.base import Arrays

DIGEST_BYTES = 20  # 160 bits: no two instances of any workload collide


def model_identity(name: str, version: int, files_digest: str) -> bytes:
    return f"{name}\x00{version}\x00{files_digest}".encode()


def instance_keys(model: bytes, inputs: Arrays, count: int) -> list[bytes]:
    """One key per instance (the first axis of every input), in order."""
    parts = []
    for name in sorted(inputs):
        array = inputs[name]
        dtype = "string" if array.dtype.kind in "OUS" else array.dtype.str  # strings: by value, whatever their width
        layout = f"{name}\x00{dtype}\x00{array.shape[1:]}\x00".encode()
        parts.append((layout, _row_bytes(array, count)))
    keys = []
    for index in range(count):
        digest = hashlib.blake2b(model, digest_size=DIGEST_BYTES)
        for layout, rows in parts:
            digest.update(layout)
            digest.update(rows[index])
        keys.append(digest.digest())
    return keys


def _row_bytes(array: np.ndarray, count: int) -> list[bytes]:
    """Each instance's values as bytes; strings each with its length, so no two rows read alike."""
    if array.dtype.kind not in "OUS":
        flat = np.ascontiguousarray(array).reshape(count, -1)
        return [row.tobytes() for row in flat]
    rows = []
    for row in array.reshape(count, -1):
        encoded = [b"b" + value if isinstance(value, bytes) else b"s" + str(value).encode() for value in row.tolist()]
        rows.append(b"".join(len(value).to_bytes(8, "little") + value for value in encoded))
    return rows
