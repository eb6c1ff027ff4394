"""This worker's placement (slot, GPU, memory limit, thread counts), set by the master's plan after fork.

`post_fork` records it (service/sizing/hooks.py) before the app, and so TensorFlow, is imported;
the app reads it to configure its backend before loading the model.
"""

from __future__ import annotations

from service.sizing.planner import WorkerPlacement

_this_worker_placement: WorkerPlacement | None = None


def place_this_worker(placement: WorkerPlacement) -> None:
    global _this_worker_placement
    _this_worker_placement = placement


def current_placement() -> WorkerPlacement | None:
    """This worker's placement, or None outside Gunicorn (tests, scripts)."""
    return _this_worker_placement
