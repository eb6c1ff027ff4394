"""Property tests: whatever the sizes, the threads and the batching, every caller gets its own rows.

The batcher is driven through the real ServedModel split and merge (a numpy forward pass,
y = 2x + 1, padded like the compiled one), by several threads submitting at once.
"""

from __future__ import annotations

import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.backends.base import ServedModel
from service.backends.signature import ModelSignature, TensorInfo
from service.batching.batcher import Batcher
from service.batching.policy import FixedTimeout

SIGNATURE = ModelSignature(inputs=(TensorInfo("x", "float32", (2,)),), outputs=(TensorInfo("y", "float32", (2,)),))


def padded_sizes(max_batch_size: int) -> list[int]:
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


@settings(max_examples=60, deadline=None)
@given(
    max_batch_size=st.integers(1, 8),
    concurrent_batches=st.integers(1, 3),
    timeout_s=st.sampled_from([0.0, 0.0005, 0.002]),
    threads=st.integers(1, 6),
    data=st.data(),
)
def test_every_caller_gets_exactly_its_own_rows(max_batch_size, concurrent_batches, timeout_s, threads, data):
    sizes = data.draw(st.lists(st.integers(1, max_batch_size), min_size=1, max_size=40), label="request sizes")
    owners = data.draw(st.lists(st.integers(0, threads - 1), min_size=len(sizes), max_size=len(sizes)), label="threads")
    passes: list[int] = []

    def forward(arrays):
        passes.append(len(arrays["x"]))
        return {"y": arrays["x"] * 2 + 1}

    model = ServedModel("m", 1, SIGNATURE, forward, padded_sizes(max_batch_size))
    batcher = Batcher(
        model.predict,
        FixedTimeout(timeout_s),
        max_batch_size=max_batch_size,
        max_queue=max(len(sizes) * max_batch_size, max_batch_size),
        concurrent_batches=concurrent_batches,
    )
    first_row = np.cumsum([0, *sizes])
    inputs = [
        np.arange(2 * first_row[i], 2 * first_row[i + 1], dtype=np.float32).reshape(-1, 2) for i in range(len(sizes))
    ]
    outcomes: dict[int, object] = {}
    start = threading.Barrier(threads)

    def caller(thread: int):
        start.wait()
        mine = [i for i, owner in enumerate(owners) if owner == thread]
        completions = [(i, batcher.submit({"x": inputs[i]}, sizes[i])) for i in mine]
        for i, completion in completions:
            outcomes[i] = completion.wait(10)

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert batcher.close(timeout_s=10)

    assert sorted(outcomes) == list(range(len(sizes)))
    for i, outcome in outcomes.items():
        np.testing.assert_array_equal(outcome.result["y"], inputs[i] * 2 + 1)
        assert sizes[i] <= outcome.batch_size <= max_batch_size
    assert all(size in padded_sizes(max_batch_size) for size in passes)
    assert batcher.stats.instances == sum(sizes) and batcher.stats.requests == len(sizes)
