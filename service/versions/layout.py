"""TF Serving's version layout on disk, the version policy and the labels, read without loading anything.

`MODEL_BASE_PATH` holds one numeric subdirectory per version (`<base>/1/`, `<base>/2/`, ...);
each holds a SavedModel, or a single `.keras`, `.h5` or `.onnx` file. Anything else in the base
path (a `tmp` directory, a half-copied `3.partial`) is ignored, so a new version can be written
beside the base path's versions and moved in with one rename.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE_SUFFIXES = (".keras", ".h5", ".onnx")
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_]+")  # TF Serving's rule for label names


class LayoutError(ValueError):
    """A version policy, a label or a base path that cannot be served; the message says which and why."""


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


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions to serve: the `latest` N (TF Serving's default, 1), `all`, or `specific` ones."""

    kind: str
    count: int = 1
    versions: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """`latest`, `latest:N`, `all` or `specific:1,3`; LayoutError otherwise."""
        kind, _, argument = text.strip().partition(":")
        try:
            if kind == "latest":
                policy = cls("latest", int(argument) if argument else 1)
                if policy.count >= 1:
                    return policy
            elif kind == "all" and not argument:
                return cls("all")
            elif kind == "specific":
                versions = frozenset(int(part) for part in argument.split(",") if part.strip())
                if versions and min(versions) >= 1:
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise LayoutError(
            f"MODEL_VERSION_POLICY={text!r} is not one of `latest`, `latest:N` (N >= 1), `all`, `specific:1,3`"
        )

    def select(self, available: set[int] | dict[int, str]) -> set[int]:
        """The versions among `available` to serve."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return self.versions & set(available)
        return set(sorted(available)[-self.count :])

    def fallbacks(self, available: set[int] | dict[int, str]) -> list[int]:
        """The versions to serve, newest first, while none of those selected loads: the older ones on disk.

        The last good version: a newest version that fails to load must not leave a starting worker
        (or the master's plan) with nothing to serve while an older one loads.
        """
        wanted = self.select(available)
        if not wanted:
            return []  # nothing selected is on disk: that is a configuration to fix, not a fault to ride out
        return sorted((number for number in available if number < max(wanted) and number not in wanted), reverse=True)


def parse_labels(text: str) -> dict[str, int]:
    """`stable=1,canary=2` -> {"stable": 1, "canary": 2}; LayoutError naming the bad part."""
    labels = {}
    for part in filter(None, (part.strip() for part in text.split(","))):
        label, _, version = part.partition("=")
        label = label.strip()
        if not LABEL_PATTERN.fullmatch(label) or not version.strip().isdigit() or int(version) < 1:
            raise LayoutError(
                f"MODEL_VERSION_LABELS: {part!r} is not `label=version` (a label of letters, digits and _; "
                "a version number)"
            )
        labels[label] = int(version)
    return labels
