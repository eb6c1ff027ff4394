"""Which models stay loaded when a worker's models do not all fit its memory budget (MODEL_MEMORY_MB).

A model not loaded is loaded on its first request; to make room, the least recently used
models with no request in flight are unloaded first (Ray Serve's model multiplexing, which
neither TF Serving nor Triton has). A model with requests in flight is never unloaded: when
the idle ones do not free enough, the load waits for none and is refused, to be retried.
Sizes are the models' measured footprints (service/backends/footprint.py), as the planner's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model as the budget sees it."""

    name: str
    size_bytes: int
    last_used_s: float  # time.monotonic() of its last request
    in_flight: int  # requests leased to its versions, queued or running


def models_to_unload(budget_bytes: int, needed_bytes: int, loaded: list[LoadedModel]) -> list[str] | None:
    """The models to unload, least recently used first, for `needed_bytes` more to fit the budget; [] when it
    fits already, None when unloading every idle model would not make room (or the model is larger than it)."""
    free_bytes = budget_bytes - sum(model.size_bytes for model in loaded)
    chosen = []
    for model in sorted((model for model in loaded if model.in_flight == 0), key=lambda model: model.last_used_s):
        if free_bytes >= needed_bytes:
            break
        chosen.append(model.name)
        free_bytes += model.size_bytes
    return chosen if free_bytes >= needed_bytes else None
