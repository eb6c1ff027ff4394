"""Requests larger than a batch: identical instances found, served beside other requests, refused or expired whole."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from batcher_kit import ANSWER_TIMEOUT_S, ManualClock, column

from service.batching.admission import DeadlineUnreachable
from service.batching.bulk import predict_instances, unique_instances
from service.batching.cost_model import CostModel
from service.batching.policy import Observations
from service.batching.requests import DeadlineExceeded
from service.caching.keys import model_identity
from service.caching.result_cache import ResultCache
from service.caching.tiers import LocalTier


def test_identical_instances_are_found_in_every_input_and_kept_in_first_appearance_order():
    inputs = {"a": np.array([[3], [1], [3], [1], [3]]), "b": np.array([[0.5], [0.5], [0.5], [0.5], [9.0]])}
    unique = unique_instances(inputs, 5)
    assert unique.count == 3  # (3, .5), (1, .5), (3, 9): equal in "a" alone is not identical
    assert unique.inputs["a"].ravel().tolist() == [3, 1, 3] and unique.inputs["b"].ravel().tolist() == [0.5, 0.5, 9]
    assert unique.positions.tolist() == [0, 1, 0, 1, 2]


def test_string_inputs_are_compared_by_value():
    words = np.array([["cat"], ["dog"], ["cat"]], dtype=object)
    unique = unique_instances({"w": words}, 3)
    assert unique.count == 2 and unique.positions.tolist() == [0, 1, 0]


def test_a_request_without_repeats_is_passed_on_as_it_is():
    inputs = column(range(5))
    unique = unique_instances(inputs, 5)
    assert unique.positions is None and unique.inputs is inputs


def test_a_large_request_is_split_into_passes_and_answered_in_order(make_batcher, forward):
    batcher = make_batcher(forward=forward)
    values = [v % 7 for v in range(50)]  # 7 distinct instances, each about 7 times
    outcome = predict_instances(batcher, None, column(values), 50)
    assert outcome.result["y"][:, 0].tolist() == [2 * v for v in values]
    assert all(len(instances) <= 4 for instances in forward.passes)
    assert sorted(v for instances in forward.passes for v in instances) == list(range(7)), "each computed once"


def test_other_requests_are_served_between_a_large_requests_passes(make_batcher, forward):
    batcher = make_batcher(forward=forward)
    forward.gate.clear()
    answers = []
    values = column(range(100, 140))
    bulk = threading.Thread(target=lambda: answers.append(predict_instances(batcher, None, values, 40)))
    bulk.start()
    forward.wait_for_pass()  # the first chunk is running, held
    single = batcher.submit(column([7]), 1)
    forward.gate.set()
    assert single.wait(ANSWER_TIMEOUT_S).result["y"][0, 0] == 14
    bulk.join(ANSWER_TIMEOUT_S)
    assert answers and answers[0].result["y"][:, 0].tolist() == [2 * v for v in range(100, 140)]
    served_at = next(i for i, instances in enumerate(forward.passes) if 7.0 in instances)
    assert served_at <= 2, f"the single request waited behind {served_at} of the large one's 10 passes"


def test_a_large_request_whose_passes_outlast_its_budget_is_refused_whole(make_batcher, forward):
    costs = Observations(CostModel({1: 0.010, 2: 0.012, 4: 0.020}))
    batcher = make_batcher(forward=forward, observations=costs)
    with pytest.raises(DeadlineUnreachable, match="10 passes"):  # 40 distinct instances: 10 passes of 20 ms
        predict_instances(batcher, None, column(range(40)), 40, timeout_s=0.1, budget_s=0.1)
    assert forward.passes == [], "nothing of it was queued"
    assert predict_instances(batcher, None, column(range(40)), 40, budget_s=0.5).result["y"].shape == (40, 2)


def test_a_large_request_whose_deadline_passes_expires_whole(make_batcher, forward):
    clock = ManualClock()
    batcher = make_batcher(forward=forward, clock=clock)
    forward.gate.clear()
    failures = []

    def run():
        try:
            predict_instances(batcher, None, column(range(12)), 12, timeout_s=1.0, clock=clock)
        except DeadlineExceeded as error:
            failures.append(error)

    bulk = threading.Thread(target=run)
    bulk.start()
    for _ in range(batcher.concurrent_batches):  # with two, a second full pass runs beside the first
        forward.wait_for_pass()
    clock.now += 2.0  # the first pass took two seconds: the deadline has passed
    forward.gate.set()
    bulk.join(ANSWER_TIMEOUT_S)
    assert len(failures) == 1, "expired whole"
    assert len(forward.passes) == batcher.concurrent_batches, "no pass started after the deadline"


def test_with_a_cache_only_the_instances_it_lacks_are_computed(make_batcher, forward):
    cache = ResultCache(model_identity("m", 1, "digest"), LocalTier(1 << 20))
    batcher = make_batcher(forward=forward)
    predict_instances(batcher, cache, column(range(6)), 6)
    forward.passes.clear()
    outcome = predict_instances(batcher, cache, column([5, 6, 0, 6, 7]), 5)
    assert outcome.result["y"][:, 0].tolist() == [10, 12, 0, 12, 14]
    assert sorted(v for instances in forward.passes for v in instances) == [6, 7], "5 and 0 were cached, 6 repeated"
    forward.passes.clear()
    outcome = predict_instances(batcher, cache, column([7, 5]), 2)
    assert forward.passes == [] and outcome.batch_size == 0, "answered from the cache alone"


def test_a_large_request_waiting_for_room_expires_whole_at_its_deadline(make_batcher, forward):
    clock = ManualClock()
    observations = Observations(CostModel({1: 0.01, 4: 0.02}))
    observations.arrived(clock.now, 100)  # online traffic a moment ago: no pass of it alone
    batcher = make_batcher(forward=forward, clock=clock, observations=observations)
    with pytest.raises(DeadlineExceeded, match="12 instances not yet answered"):
        predict_instances(batcher, None, column(range(12)), 12, timeout_s=0.2, clock=clock)
    assert forward.passes == [] and batcher.background_instances == 0, "none of it ran, nothing of it is left"
