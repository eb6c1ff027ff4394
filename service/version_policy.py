"""Which versions of a model to serve (MODEL_VERSION_POLICY) and their labels (MODEL_VERSION_LABELS), as text.

Settings validate them at start and at each SIGHUP; the workers choose versions with them. Pure
parsing, below both (service/versions/ reads the base path's directories).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LABEL_PATTERN = re.compile(r"[A-Za-z0-9_]+")  # TF Serving's rule for label names


class LayoutError(ValueError):
    """A version policy, a label or a base path that cannot be served; the message says which and why."""


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
