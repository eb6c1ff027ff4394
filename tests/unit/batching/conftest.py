"""Fixtures of the batching tests: a gated predict, and batchers that are closed after each test."""

from __future__ import annotations

import pytest
from batcher_kit import ANSWER_TIMEOUT_S, ArrayPredict, GatedPredict

from service.batching.batcher import Batcher
from service.batching.policy import FixedTimeout


@pytest.fixture
def predict():
    return GatedPredict()


@pytest.fixture
def forward():
    """A predict over arrays (batcher_kit.ArrayPredict), opened before the batchers close."""
    forward = ArrayPredict()
    yield forward
    forward.gate.set()  # before the batchers close (make_batcher's teardown runs after this one)


@pytest.fixture(params=[1, 2], ids=["one pass at a time", "two concurrent passes"])
def make_batcher(predict, request):
    created = []

    def make(batch_timeout_s=0.0, forward=None, policy=None, **options):
        """A batcher over `forward` (the gated predict by default) with `policy` (a fixed timeout by default)."""
        defaults = {"max_batch_size": 4, "max_queue": 16, "concurrent_batches": request.param}
        policy = policy or FixedTimeout(batch_timeout_s)
        batcher = Batcher(forward or predict, policy, **{**defaults, **options})
        created.append(batcher)
        return batcher

    yield make
    predict.gate.set()
    for batcher in created:
        assert batcher.close(timeout_s=ANSWER_TIMEOUT_S)
