"""The sample instances load generators shape from a metadata answer."""

from __future__ import annotations
