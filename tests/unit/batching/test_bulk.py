"""Requests larger than a batch: identical instances found, chunks that share the batcher, refused or expired whole."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from batcher_kit import ANSWER_TIMEOUT_S, ManualClock

from service.batching.admission import DeadlineUnreachable
from service.batching.bulk import predict_instances, unique_instances
from service.batching.cost_model import CostModel
from service.batching.policy import Observations
from service.batching.requests import BatchOutcome, DeadlineExceeded, QueueFull


class ArrayPredict:
    """y = 2x over payloads of arrays; records each pass's instances and can be held."""

    def __init__(self):
        self.passes: list[list[float]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)

    def __call__(self, payloads):
        self.passes.append([float(v) for payload in payloads for v in payload["x"][:, 0]])
        self.started.release()
        assert self.gate.wait(ANSWER_TIMEOUT_S)
        return [{"y": payload["x"] * 2} for payload in payloads]

    def wait_for_pass(self):
        assert self.started.acquire(timeout=ANSWER_TIMEOUT_S), "no pass started"


@pytest.fixture
def forward():
    forward = ArrayPredict()
    yield forward
    forward.gate.set()  # before the batchers close (make_batcher's teardown runs after this one)


def column(values) -> dict[str, np.ndarray]:
    return {"x": np.array([[v, -v] for v in values], dtype=np.float32)}


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
    outcome = predict_instances(batcher, column(values), 50)
    assert outcome.result["y"][:, 0].tolist() == [2 * v for v in values]
    assert all(len(instances) <= 4 for instances in forward.passes)
    assert sorted(v for instances in forward.passes for v in instances) == list(range(7)), "each computed once"


def test_other_requests_are_served_between_a_large_requests_passes(make_batcher, forward):
    batcher = make_batcher(forward=forward)
    forward.gate.clear()
    answers = []
    bulk = threading.Thread(target=lambda: answers.append(predict_instances(batcher, column(range(100, 140)), 40)))
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
        predict_instances(batcher, column(range(40)), 40, timeout_s=0.1, budget_s=0.1)
    assert forward.passes == [], "nothing of it was queued"
    assert predict_instances(batcher, column(range(40)), 40, budget_s=0.5).result["y"].shape == (40, 2)


def test_a_large_request_whose_deadline_passes_expires_whole(make_batcher, forward):
    clock = ManualClock()
    batcher = make_batcher(forward=forward, clock=clock)
    forward.gate.clear()
    failures = []

    def run():
        try:
            predict_instances(batcher, column(range(12)), 12, timeout_s=1.0, clock=clock)
        except DeadlineExceeded as error:
            failures.append(error)

    bulk = threading.Thread(target=run)
    bulk.start()
    forward.wait_for_pass()
    clock.now += 2.0  # the first pass took two seconds: the deadline has passed
    forward.gate.set()
    bulk.join(ANSWER_TIMEOUT_S)
    assert len(failures) == 1 and "not yet queued" in str(failures[0])
    assert len(forward.passes) == 1, "no pass spent on the rest"


def test_an_accepted_request_waits_for_room_rather_than_being_answered_in_part():
    submitted, waits = [], []

    def submit(rows, size, timeout_s=None):
        if len(submitted) == 1 and not waits:  # the second chunk finds the queue full once
            raise QueueFull("16 instances are already waiting", 0.05)
        submitted.append(rows["x"][:, 0].tolist())
        return SimpleNamespace(wait=lambda: BatchOutcome({"y": rows["x"] * 2}, size, 0.0))

    batcher = SimpleNamespace(
        max_batch_size=4,
        preferred_batch_size=4,
        queue_depth=0,
        submit=submit,
        check_bulk=lambda size, budget_s: None,
        full_pass_seconds=lambda: 0.02,
    )
    outcome = predict_instances(batcher, column(range(8)), 8, wait=waits.append)
    assert waits == [0.02], "waited one pass (less than Retry-After) for room"
    assert submitted == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert outcome.result["y"][:, 0].tolist() == [2 * v for v in range(8)]


def test_each_chunk_fills_what_the_queued_requests_leave_of_a_batch():
    sizes = []

    def submit(rows, size, timeout_s=None):
        sizes.append(size)
        return SimpleNamespace(wait=lambda: BatchOutcome({"y": rows["x"] * 2}, 4, 0.0))

    batcher = SimpleNamespace(
        max_batch_size=4, preferred_batch_size=4, queue_depth=3, submit=submit, check_bulk=lambda size, budget_s: None
    )
    outcome = predict_instances(batcher, column(range(6)), 6)
    assert sizes == [1] * 6, "3 of 4 taken by others each time: one instance a chunk"
    batcher.queue_depth, sizes[:] = 0, []
    predict_instances(batcher, column(range(6)), 6)
    assert sizes == [4, 2]
    assert outcome.result["y"][:, 0].tolist() == [2 * v for v in range(6)]
