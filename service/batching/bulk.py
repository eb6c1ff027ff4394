"""Requests of any size up to MAX_REQUEST_INSTANCES: de-duplicated, split into passes, answered whole.

A request's identical instances (same dtype, shape and bytes in every input) are computed once.
Up to a batch of distinct ones is one online request. More go to the batcher as background work
(background.py) at bulk priority: they fill the room online batches leave and run in passes of
their own while online traffic is quiet, so a large request never holds the worker from other
clients' requests.
Admission and deadlines apply to the whole request: it is refused whole (503) when the queue
ahead and all of its passes would outlast its budget, and expires whole (504) when any of it does;
it is never answered in part. Payloads are arrays keyed by input name with the instances along
the first axis, as the protocols decode them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.backends.base import Arrays
from service.batching.background import BULK_PRIORITY, BackgroundWork
from service.batching.batcher import Batcher
from service.batching.requests import BatchOutcome, DeadlineExceeded


class Lookup(Protocol):
    missing: np.ndarray  # the rows of the instances looked up that the cache does not hold

    def merge(self, computed: Arrays | None) -> Arrays: ...


class InstanceCache(Protocol):
    """Answers kept per instance (service/caching/result_cache.py, ResultCache's view of one model version)."""

    def lookup(self, inputs: Arrays, count: int) -> Lookup: ...

    def store(self, lookup: Lookup, computed: Arrays) -> None: ...


@dataclass(frozen=True)
class UniqueInstances:
    """The distinct instances of a request, in order of first appearance, and where each instance went."""

    inputs: Arrays
    count: int  # distinct instances
    positions: np.ndarray | None  # for each instance of the request, its row in `inputs`; None: all distinct


def unique_instances(inputs: Arrays, count: int) -> UniqueInstances:
    """Group identical instances: equal bytes in every input (each input has one dtype and row shape)."""
    if count < 2:
        return UniqueInstances(inputs, count, None)
    arrays = list(inputs.values())
    if any(array.dtype == object for array in arrays):
        first, positions = _unique_by_value(arrays, count)
    else:
        first, positions = _unique_by_bytes(arrays, count)
    if len(first) == count:
        return UniqueInstances(inputs, count, None)
    return UniqueInstances({name: array[first] for name, array in inputs.items()}, len(first), positions)


def _unique_by_bytes(arrays: list[np.ndarray], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Numeric and boolean inputs: each instance's bytes as one opaque value, grouped by numpy."""
    rows = np.hstack([np.ascontiguousarray(array).reshape(count, -1).view(np.uint8) for array in arrays])
    if rows.shape[1] == 0:  # instances without values are all alike
        return np.zeros(1, dtype=np.intp), np.zeros(count, dtype=np.intp)
    keys = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)  # np.unique sorts by value; the answer keeps the request's order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.ravel()]


def _unique_by_value(arrays: list[np.ndarray], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of strings (object arrays): each instance's values as a tuple."""
    seen: dict[tuple, int] = {}
    first: list[int] = []
    positions = np.empty(count, dtype=np.intp)
    for index in range(count):
        key = tuple(
            tuple(array[index].ravel().tolist()) if array.dtype == object else array[index].tobytes()
            for array in arrays
        )
        position = seen.setdefault(key, len(seen))
        if position == len(first):
            first.append(index)
        positions[index] = position
    return np.array(first, dtype=np.intp), positions


def predict_instances(
    batcher: Batcher,
    cache: InstanceCache | None,
    inputs: Arrays,
    count: int,
    timeout_s: float | None = None,
    budget_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    payload_of: Callable[[Arrays], Any] = lambda rows: rows,
) -> BatchOutcome:
    """Run a request of `count` instances; its outcome holds one output row per instance, in order.

    Raises what `Batcher.submit` raises (refused whole before anything is queued), or
    DeadlineExceeded when the request's deadline passes before its last instance has run.
    With `cache`, only the distinct instances it does not hold are computed, and their answers
    are kept. `outcome.batch_size` is the largest batch any of its instances was served in (0:
    all came from the cache). `clock` must be the batcher's. `payload_of` makes rows of the inputs
    into what the batcher's forward pass takes (ModelInputs, naming the model version).
    """
    unique = unique_instances(inputs, count)
    if cache is None:
        outcome = _compute(batcher, unique.inputs, unique.count, timeout_s, budget_s, clock, payload_of)
    else:
        lookup = cache.lookup(unique.inputs, unique.count)
        if lookup.missing.size:
            missing = {name: array[lookup.missing] for name, array in unique.inputs.items()}
            computed = _compute(batcher, missing, lookup.missing.size, timeout_s, budget_s, clock, payload_of)
            cache.store(lookup, computed.result)
            outcome = BatchOutcome(lookup.merge(computed.result), computed.batch_size, computed.queue_wait_s)
        else:
            outcome = BatchOutcome(lookup.merge(None), 0, 0.0)
    if unique.positions is None:
        return outcome
    result = {name: array[unique.positions] for name, array in outcome.result.items()}
    return BatchOutcome(result, outcome.batch_size, outcome.queue_wait_s)


def _compute(
    batcher: Batcher,
    inputs: Arrays,
    count: int,
    timeout_s: float | None,
    budget_s: float | None,
    clock: Callable[[], float],
    payload_of: Callable[[Arrays], Any],
) -> BatchOutcome:
    """Up to a batch as one online request; more as background work at bulk priority, admitted whole."""
    if count <= batcher.max_batch_size:
        return batcher.submit(payload_of(inputs), count, timeout_s, budget_s).wait()
    batcher.check_bulk(count, budget_s)
    deadline = clock() + timeout_s if timeout_s is not None else None
    work = BackgroundWork(inputs, count, BULK_PRIORITY, deadline, payload_of=payload_of)
    batcher.submit_background(work)
    try:
        return work.wait(timeout_s)
    except TimeoutError:  # instances still waiting for room when the deadline passed: expire it whole now
        work.cancel()
        raise DeadlineExceeded(f"its deadline passed with {count - work.done} instances not yet answered") from None
