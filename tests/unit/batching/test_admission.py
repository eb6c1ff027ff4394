"""Admission on a batcher's queue: predicted answer times from a fixed cost table and a clock the test moves."""

from __future__ import annotations

import pytest
from batcher_kit import ANSWER_TIMEOUT_S, ManualClock

from service.batching.admission import DeadlineUnreachable
from service.batching.cost_model import CostModel
from service.batching.policy import Observations
from service.batching.requests import QueueFull


def test_admission_refuses_what_the_queue_makes_too_late_and_says_when_to_retry(make_batcher, predict):
    clock = ManualClock()
    costs = Observations(CostModel({1: 0.010, 2: 0.012, 4: 0.020}))
    # One pass at a time, so the nine queued below stay queued while the first pass is held.
    batcher = make_batcher(max_batch_size=4, max_queue=12, observations=costs, concurrent_batches=1, clock=clock)
    predict.hold()
    running = batcher.submit(0)
    predict.wait_for_batch()
    clock.now += 0.004  # 6 ms of the running pass left
    first = batcher.submit(1, budget_s=0.001)  # shorter than its own pass: the model's limit, never refused
    queued = [first, *(batcher.submit(i, size=1) for i in range(2, 10))]  # 9 waiting
    # the running pass's 6 ms, then the 9 ahead as two full passes (40 ms), then a pass of 2 (12 ms)
    assert batcher.predicted_latency_s(1) == pytest.approx(0.058)
    with pytest.raises(DeadlineUnreachable) as refused:
        batcher.submit(99, budget_s=0.050)
    assert refused.value.retry_after_s == pytest.approx(0.058 - 0.050 + 0.020)  # the excess and one full pass
    with pytest.raises(DeadlineUnreachable):  # the same verdict before the request's payload is known
        batcher.check_room(1, budget_s=0.050)
    batcher.check_room(1)  # without a budget, only room counts
    accepted = batcher.submit(100, budget_s=0.100)
    with pytest.raises(QueueFull) as full:
        batcher.submit(101, size=3)
    with pytest.raises(QueueFull):
        batcher.check_room(3)
    batcher.check_room(2)  # exactly fills the queue
    assert full.value.retry_after_s == pytest.approx(0.006 + 0.020 + 0.020 + 0.012)  # ten waiting: 4 + 4 + 2
    predict.gate.set()
    for completion in [running, *queued, accepted]:
        completion.wait(ANSWER_TIMEOUT_S)
    assert batcher.close(timeout_s=ANSWER_TIMEOUT_S)  # every pass has ended
    assert batcher.predicted_latency_s(1) == pytest.approx(costs.cost_model.seconds(1))  # nothing ahead


def test_admits_counts_the_room_that_the_default_budget_leaves_and_grows_as_passes_end(make_batcher, predict):
    clock = ManualClock()
    costs = Observations(CostModel({1: 0.010, 2: 0.012, 4: 0.020}))
    batcher = make_batcher(
        max_batch_size=4, max_queue=16, observations=costs, concurrent_batches=1, clock=clock, default_budget_s=0.050
    )
    heard = []
    batcher.add_room_listener(lambda: heard.append(batcher.admits))
    assert batcher.admits == 9, "idle: two full passes and one of a lone instance fit 50 ms (the queue holds 16)"
    predict.hold()
    running = batcher.submit(0, size=4)  # ends at +20 ms
    predict.wait_for_batch()
    # Behind the running pass (20 ms): a batch of up to 4 (ends by +40 ms), then one full pass and a lone
    # instance (20 + 20 + 10 ms) fit 50 ms; a sixth would make the last pass one of 2 (52 ms).
    assert batcher.admits == 5
    queued = [batcher.submit(i) for i in range(1, 6)]
    assert batcher.admits == 0 and batcher.room == 11
    with pytest.raises(DeadlineUnreachable):
        batcher.check_room(1, budget_s=0.050)
    heard.clear()
    predict.gate.set()
    assert [c.wait(ANSWER_TIMEOUT_S).result for c in [running, *queued]] == [0, 10, 20, 30, 40, 50]
    assert batcher.close(timeout_s=ANSWER_TIMEOUT_S)
    # Told when each batch left (its pass counted) and when each pass ended, with the room then made.
    assert len(heard) >= 2 and heard[-1] == max(heard) > 5, "told as passes end, with the room made"


def test_without_a_default_budget_admits_is_the_room(make_batcher, predict):
    costs = Observations(CostModel({1: 10.0, 4: 20.0}))  # passes far longer than any budget
    batcher = make_batcher(max_batch_size=4, max_queue=8, observations=costs, concurrent_batches=1)
    predict.hold()
    running = batcher.submit(0, size=4)
    predict.wait_for_batch()
    queued = batcher.submit(1, size=3)
    assert batcher.admits == batcher.room == 5
    predict.gate.set()
    assert [c.wait(ANSWER_TIMEOUT_S).result for c in (running, queued)] == [0, 10]


def test_admission_predicts_full_batches_beside_each_other_and_a_partial_one_after_them(make_batcher, predict):
    clock = ManualClock()
    costs = Observations(CostModel({1: 0.010, 4: 0.020}))  # passes beside each other: twice as long until measured
    batcher = make_batcher(max_batch_size=4, observations=costs, concurrent_batches=2, clock=clock)
    predict.hold()
    alone = batcher.submit(1, size=4)  # ends at +20 ms
    predict.wait_for_batch()
    beside = batcher.submit(2, size=4)  # beside the first: ends at +40 ms
    predict.wait_for_batch()
    ahead = batcher.submit(3, size=4)  # both threads busy: queued
    # the queued full batch starts when the first pass ends (+20 ms) and runs beside the second (40 ms, to
    # +60 ms); a partial batch waits for every pass to end, then takes its own 10 ms
    assert batcher.predicted_latency_s(1) == pytest.approx(0.070)
    with pytest.raises(DeadlineUnreachable):
        batcher.submit(4, budget_s=0.065)
    predict.gate.set()
    assert [c.wait(ANSWER_TIMEOUT_S).result for c in (alone, beside, ahead)] == [10, 20, 30]


def test_admission_refuses_a_request_that_would_make_the_batch_it_joins_late(make_batcher, predict):
    clock = ManualClock()
    costs = Observations(CostModel({1: 0.010, 2: 0.030, 4: 0.040}))
    batcher = make_batcher(max_batch_size=4, observations=costs, concurrent_batches=1, clock=clock)
    predict.hold()
    running = batcher.submit(0, size=4)  # ends at +40 ms
    predict.wait_for_batch()
    tight = batcher.submit(1, budget_s=0.060)  # answered at +50 ms: admitted, due at +60 ms
    # Joining it would make its pass one of 2 (30 ms): both answered at +70 ms, after its due.
    with pytest.raises(DeadlineUnreachable, match="later than the requests whose batch it would join"):
        batcher.submit(2, budget_s=10.0)
    patient = batcher.submit(3, budget_s=10.0, size=4)  # a batch of its own, after: delays nobody
    predict.gate.set()
    assert [c.wait(ANSWER_TIMEOUT_S).result for c in (running, tight, patient)] == [0, 10, 30]
    assert predict.batches[1:] == [[1], [3]]
