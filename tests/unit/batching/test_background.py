"""Background work: fills online batches' room, runs alone only while online traffic is quiet, cancels, fails whole."""

from __future__ import annotations

import threading

import pytest
from batcher_kit import ANSWER_TIMEOUT_S, ManualClock, column

from service.batching.background import BULK_PRIORITY, JOB_PRIORITY, BackgroundWork, Cancelled
from service.batching.cost_model import CostModel
from service.batching.policy import Observations
from service.batching.requests import BatcherClosed


def busy_online(clock: ManualClock, costs: dict[int, float]) -> Observations:
    """Observations that have just seen 100 online instances arrive: background passes alone would intrude."""
    observations = Observations(CostModel(costs))
    observations.arrived(clock.now, 100)
    return observations


def values(work: BackgroundWork) -> list[float]:
    return (work.wait(ANSWER_TIMEOUT_S).result["y"][:, 0] / 2).tolist()


@pytest.mark.parametrize(
    ("costs", "online", "filled"),
    [
        ({1: 0.010, 2: 0.013, 4: 0.020}, [7, 8, 9], 1),  # 3 run padded to 4 anyway: one free place
        ({1: 0.010, 2: 0.013, 4: 0.020}, [7], 0),  # a batch of 1 grown to 2 would take 30 % longer than alone
        ({1: 0.010, 2: 0.0104, 4: 0.0108}, [7], 3),  # ... to 4 here only 8 % longer: filled
    ],
)
def test_an_online_batch_is_filled_where_it_costs_almost_nothing(make_batcher, forward, costs, online, filled):
    clock = ManualClock()
    batcher = make_batcher(forward=forward, clock=clock, observations=busy_online(clock, costs))
    work = BackgroundWork(column(range(100, 110)), 10)
    batcher.submit_background(work)
    assert batcher.submit(column(online), len(online)).wait(ANSWER_TIMEOUT_S).result["y"][:, 0].tolist() == [
        2 * v for v in online
    ]
    assert forward.passes[0] == [*online, *range(100, 100 + filled)]
    assert work.done == filled


def test_background_work_runs_alone_once_online_traffic_is_quiet(make_batcher, forward):
    clock = ManualClock()
    batcher = make_batcher(forward=forward, clock=clock, observations=busy_online(clock, {1: 0.01, 4: 0.02}))
    work = BackgroundWork(column(range(10)), 10)
    batcher.submit_background(work)
    with pytest.raises(TimeoutError):
        work.wait(0.2)  # online requests arrived a moment ago: none of it may delay the next one
    assert forward.passes == []
    clock.now += 10.0  # ten seconds without an online arrival
    assert values(work) == list(range(10)), "in order, in full batches"
    assert all(len(instances) == 4 for instances in forward.passes[:2])


def test_bulk_work_is_served_before_job_work(make_batcher, forward):
    batcher = make_batcher(forward=forward, concurrent_batches=1)
    forward.gate.clear()
    batcher.submit(column([0]), 1)
    forward.wait_for_pass()  # held: both works wait behind it
    job = BackgroundWork(column(range(10, 14)), 4, JOB_PRIORITY)
    bulk = BackgroundWork(column(range(20, 24)), 4, BULK_PRIORITY)
    batcher.submit_background(job)
    batcher.submit_background(bulk)
    forward.gate.set()
    assert values(job) == [10, 11, 12, 13] and values(bulk) == [20, 21, 22, 23]
    assert forward.passes[1:] == [[20, 21, 22, 23], [10, 11, 12, 13]]


def test_a_cancelled_work_stops_before_its_next_batch(make_batcher, forward):
    batcher = make_batcher(forward=forward, concurrent_batches=1)
    forward.gate.clear()
    running = BackgroundWork(column(range(12)), 12)
    queued = BackgroundWork(column(range(50, 54)), 4)
    batcher.submit_background(running)
    forward.wait_for_pass()
    batcher.submit_background(queued)
    queued.cancel()
    running.cancel()
    forward.gate.set()
    for work in (running, queued):
        with pytest.raises(Cancelled):
            work.wait(ANSWER_TIMEOUT_S)
    assert forward.passes == [[0, 1, 2, 3]], "the pass under way ended; nothing else ran"
    assert running.done == 4


def test_a_failing_instance_fails_its_work_whole_and_no_other(make_batcher):
    def predict(payloads):
        if any(5 in payload["x"][:, 0] for payload in payloads):
            raise ValueError("instance 5 is bad")
        return [{"y": payload["x"] * 2} for payload in payloads]

    batcher = make_batcher(forward=predict)
    bad, good = BackgroundWork(column(range(12)), 12), BackgroundWork(column(range(20, 26)), 6)
    batcher.submit_background(bad)
    batcher.submit_background(good)
    with pytest.raises(ValueError, match="instance 5"):
        bad.wait(ANSWER_TIMEOUT_S)
    assert values(good) == list(range(20, 26))


def test_close_runs_the_background_work_accepted_before_it(make_batcher, forward):
    batcher = make_batcher(forward=forward)
    forward.gate.clear()
    work = BackgroundWork(column(range(9)), 9)
    batcher.submit_background(work)
    forward.wait_for_pass()
    closing = threading.Thread(target=batcher.close)
    closing.start()
    forward.gate.set()
    closing.join(ANSWER_TIMEOUT_S)
    assert values(work) == list(range(9))
    with pytest.raises(BatcherClosed):
        batcher.submit_background(BackgroundWork(column([1]), 1))
