"""Requests of any size up to MAX_REQUEST_INSTANCES: de-duplicated, split into passes, answered whole.

A request's identical instances (same dtype, shape and bytes in every input) are computed once.
The distinct ones go to the batcher in chunks, the next one queued when the last has run, each
sized to fill what the requests queued by then leave of a batch: other clients' requests are
served between and beside them, so a large request fills the worker's idle room instead of
holding it, and its chunks join batches like any other request.
Admission and deadlines apply to the whole request: it is refused whole (503) when the queue
ahead and all of its passes would outlast its budget, and expires whole (504) when a chunk does;
it is never answered in part. Payloads are arrays keyed by input name with the instances along
the first axis, as the protocols decode them.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.backends.base import Arrays
from service.batching.batcher import Batcher
from service.batching.requests import BatchOutcome, DeadlineExceeded, QueueFull
from service.threads import Completion

# Chunks of one request queued or running at once: with one, a request that arrives meanwhile waits
# for at most the chunk running, never for chunks queued ahead of it.
CHUNKS_AT_ONCE = 1


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
    inputs: Arrays,
    count: int,
    timeout_s: float | None = None,
    budget_s: float | None = None,
    wait: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> BatchOutcome:
    """Run a request of `count` instances; its outcome holds one output row per instance, in order.

    Raises what `Batcher.submit` raises (refused whole before anything is queued), or
    DeadlineExceeded when the request's deadline passes before its last chunk has run.
    `outcome.batch_size` is the largest batch any of its instances was served in. `clock` must be
    the batcher's; `wait` is how to wait for room when an accepted request's next chunk finds none.
    """
    unique = unique_instances(inputs, count)
    if unique.count <= batcher.max_batch_size:
        outcome = batcher.submit(unique.inputs, unique.count, timeout_s, budget_s).wait()
    else:
        batcher.check_bulk(unique.count, budget_s)
        outcome = _run_in_chunks(batcher, unique, timeout_s, wait, clock)
    if unique.positions is None:
        return outcome
    result = {name: array[unique.positions] for name, array in outcome.result.items()}
    return BatchOutcome(result, outcome.batch_size, outcome.queue_wait_s)


def _run_in_chunks(
    batcher: Batcher,
    unique: UniqueInstances,
    timeout_s: float | None,
    wait: Callable[[float], None],
    clock: Callable[[], float],
) -> BatchOutcome:
    """Submit chunks as earlier ones end, CHUNKS_AT_ONCE at a time; merge their results in order."""
    chunk = batcher.preferred_batch_size
    deadline = clock() + timeout_s if timeout_s is not None else None
    running: collections.deque[Completion] = collections.deque()
    outcomes: list[BatchOutcome] = []
    start = 0
    while start < unique.count or running:
        while start < unique.count and len(running) < CHUNKS_AT_ONCE:
            remaining_s = None if deadline is None else deadline - clock()
            if remaining_s is not None and remaining_s <= 0:
                raise DeadlineExceeded(f"its deadline passed with {unique.count - start} instances not yet queued")
            # Fill what the requests queued now leave of the next batch, not a whole batch beside them.
            size = min(max(1, chunk - batcher.queue_depth), unique.count - start)
            rows = {name: array[start : start + size] for name, array in unique.inputs.items()}
            try:
                running.append(batcher.submit(rows, size, remaining_s))
            except QueueFull as full:  # accepted already: wait for room rather than answer in part
                if running:
                    break
                wait(min(full.retry_after_s, max(batcher.full_pass_seconds(), 0.001)))
                continue
            start += size
        if running:
            outcomes.append(running.popleft().wait())
    result = {name: np.concatenate([o.result[name] for o in outcomes]) for name in outcomes[0].result}
    return BatchOutcome(result, max(o.batch_size for o in outcomes), outcomes[0].queue_wait_s)
