"""TF Serving's version layout on disk, the version policy and the labels, read without loading anything.

`MODEL_BASE_PATH` holds one numeric subdirectory per version (`<base>/1/`, `<base>/2/`, ...);
each holds a SavedModel, or a single `.keras`, `.h5` or `.onnx` file. Anything else in the base
path (a `tmp` directory, a half-copied `3.partial`) is ignored, so a new version can be written
beside the base path's versions and moved in with one rename.
"""

from __future__ import annotations

import os
from pathlib import Path

from service.version_policy import LayoutError

MODEL_FILE_SUFFIXES = (".keras", ".h5", ".onnx")


def find_versions(base_path: str) -> dict[int, str]:
    """Every version directory of `base_path` and the model inside it: {version: path to load}.

    A version directory holding no model yet (being copied) maps to the directory itself, so
    loading it fails with the backend's reason and its state says so.
    """
    try:
        entries = list(os.scandir(base_path))
    except OSError as error:
        raise LayoutError(f"MODEL_BASE_PATH={base_path!r} cannot be read: {error.strerror}") from None
    versions = {}
    for entry in entries:
        if entry.name.isdigit() and entry.is_dir() and int(entry.name) > 0:
            versions[int(entry.name)] = model_in(entry.path)
    return versions


def model_in(version_dir: str) -> str:
    """The path to load for one version directory: its single model file, else the directory (a SavedModel)."""
    files = sorted(path for path in Path(version_dir).iterdir() if path.suffix in MODEL_FILE_SUFFIXES)
    return str(files[0]) if len(files) == 1 else version_dir


def files_stamp(path: str) -> tuple:
    """The names, sizes and modification times of the files of a model: they change when it is rewritten."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    stamps = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:  # removed while we looked: the next poll sees the change
            continue
        stamps.append((str(file.relative_to(root)) if root.is_dir() else file.name, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)
