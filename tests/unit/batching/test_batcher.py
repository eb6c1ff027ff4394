"""The batcher on its own: plain payloads, a predict we gate with events, no model and no sleeps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from batcher_kit import ANSWER_TIMEOUT_S, ManualClock

from service.batching.cost_model import CostModel
from service.batching.policy import AdaptivePolicy, Observations
from service.batching.requests import BatcherClosed, BatchSizeMismatch, DeadlineExceeded, QueueFull


def test_backlog_is_taken_in_one_batch_even_with_zero_timeout(make_batcher, predict):
    batcher = make_batcher(max_batch_size=8, batch_timeout_s=0.0)
    predict.hold()
    first = batcher.submit(1)
    predict.wait_for_batch()  # the first request runs alone, and holds the thread
    backlog = [batcher.submit(value) for value in range(2, 7)]
    predict.gate.set()
    outcomes = [completion.wait(ANSWER_TIMEOUT_S) for completion in [first, *backlog]]
    assert outcomes[0].batch_size == 1
    # Each waiting request is older than the timeout, yet all five go in one batch, not five of one.
    assert [outcome.batch_size for outcome in outcomes[1:]] == [5] * 5
    assert predict.batches == [[1], [2, 3, 4, 5, 6]]


def test_full_batch_is_sent_without_waiting_for_the_timeout(make_batcher):
    batcher = make_batcher(max_batch_size=4, batch_timeout_s=60.0)
    completions = [batcher.submit(value) for value in range(4)]
    outcomes = [completion.wait(ANSWER_TIMEOUT_S) for completion in completions]
    assert {outcome.batch_size for outcome in outcomes} == {4}
    assert batcher.stats.sent_because == {"full": 1}


def test_lone_request_is_sent_when_its_timeout_expires(make_batcher):
    batcher = make_batcher(max_batch_size=4, batch_timeout_s=0.05)
    started = time.monotonic()
    outcome = batcher.submit(7).wait(ANSWER_TIMEOUT_S)
    assert outcome.result == 70 and outcome.batch_size == 1
    assert time.monotonic() - started >= 0.05
    assert batcher.stats.sent_because == {"timeout": 1}


def test_requests_arriving_within_the_timeout_share_a_batch(make_batcher, predict):
    batcher = make_batcher(max_batch_size=8, batch_timeout_s=30.0)
    completions = [batcher.submit(value) for value in range(3)]
    # Not full and the timeout is far away: nothing may have run yet.
    assert predict.batches == []
    completions += [batcher.submit(value) for value in range(3, 8)]  # now full
    assert {completion.wait(ANSWER_TIMEOUT_S).batch_size for completion in completions} == {8}


def test_each_caller_gets_its_own_result_in_order(make_batcher, predict):
    batcher = make_batcher(max_batch_size=4, batch_timeout_s=0.0, max_queue=64)
    predict.hold()
    batcher.submit(0)
    predict.wait_for_batch()
    completions = {value: batcher.submit(value) for value in range(1, 30)}
    predict.gate.set()
    assert {value: c.wait(ANSWER_TIMEOUT_S).result for value, c in completions.items()} == {
        value: value * 10 for value in range(1, 30)
    }
    served = [payload for batch in predict.batches for payload in batch]
    assert served == list(range(30))  # arrival order is kept


def test_multi_instance_requests_count_their_size_and_are_never_split(make_batcher, predict):
    batcher = make_batcher(max_batch_size=4, batch_timeout_s=0.0)
    predict.hold()
    batcher.submit(0, size=1)
    predict.wait_for_batch()
    three, two, one = batcher.submit(3, size=3), batcher.submit(2, size=2), batcher.submit(1, size=1)
    predict.gate.set()
    # 3 + 2 would exceed 4: the 2 waits for the next batch, where the 1 joins it.
    assert three.wait(ANSWER_TIMEOUT_S).batch_size == 3
    assert two.wait(ANSWER_TIMEOUT_S).batch_size == 3
    assert one.wait(ANSWER_TIMEOUT_S).batch_size == 3
    assert predict.batches == [[0], [3], [2, 1]]


def test_request_size_must_fit_one_batch(make_batcher):
    batcher = make_batcher(max_batch_size=4)
    with pytest.raises(ValueError):
        batcher.submit(1, size=5)
    with pytest.raises(ValueError):
        batcher.submit(1, size=0)


def test_full_queue_refuses_at_once_and_loses_nothing_accepted(make_batcher, predict):
    batcher = make_batcher(max_batch_size=2, max_queue=4)
    predict.hold()
    running = batcher.submit(0)
    predict.wait_for_batch()
    queued = [batcher.submit(value) for value in range(1, 5)]
    assert batcher.queue_depth == 4
    started = time.monotonic()
    with pytest.raises(QueueFull):
        batcher.submit(99)
    assert time.monotonic() - started < 0.1
    predict.gate.set()
    assert [c.wait(ANSWER_TIMEOUT_S).result for c in [running, *queued]] == [0, 10, 20, 30, 40]
    assert batcher.queue_depth == 0


def test_room_listeners_hear_of_every_batch_that_leaves_the_queue_and_every_pass_that_ends(make_batcher, predict):
    batcher = make_batcher(max_batch_size=2, max_queue=4)
    depths_heard = []
    batcher.add_room_listener(lambda: depths_heard.append(batcher.queue_depth))
    predict.hold()
    running = batcher.submit(0)
    predict.wait_for_batch()
    queued = [batcher.submit(value) for value in range(1, 5)]
    assert depths_heard == [0], "told once, when the first request left for its pass"
    assert batcher.room == 0 and batcher.accepted_requests == 5
    predict.gate.set()
    assert [c.wait(ANSWER_TIMEOUT_S).result for c in [running, *queued]] == [0, 10, 20, 30, 40]
    assert len(depths_heard) == 6, "then when each pass ended and each batch of two left"
    assert depths_heard[1:] == sorted(depths_heard[1:], reverse=True) and depths_heard[-1] == 0, "room made first"


def test_a_failing_batch_fails_only_its_own_requests(make_batcher):
    def predict(payloads):
        if "poison" in payloads:
            raise RuntimeError("model exploded")
        return [p.upper() for p in payloads]

    batcher = make_batcher(forward=predict)
    with pytest.raises(RuntimeError, match="model exploded"):
        batcher.submit("poison").wait(ANSWER_TIMEOUT_S)
    assert batcher.submit("fine").wait(ANSWER_TIMEOUT_S).result == "FINE"
    assert batcher.stats.failed_batches == 1


def test_predict_returning_the_wrong_count_fails_the_batch(make_batcher):
    batcher = make_batcher(forward=lambda payloads: payloads[:-1])
    with pytest.raises(BatchSizeMismatch):
        batcher.submit(1).wait(ANSWER_TIMEOUT_S)


def test_a_full_batch_runs_beside_a_running_pass(make_batcher, predict):
    batcher = make_batcher(max_batch_size=4, concurrent_batches=2)
    predict.hold()
    first = batcher.submit(1)
    predict.wait_for_batch()
    full = [batcher.submit(value) for value in range(2, 6)]
    predict.wait_for_batch()  # started while the first pass is still held
    assert predict.batches == [[1], [2, 3, 4, 5]]
    predict.gate.set()
    assert [c.wait(ANSWER_TIMEOUT_S).batch_size for c in [first, *full]] == [1, 4, 4, 4, 4]


def test_a_partial_batch_waits_for_the_running_pass_not_for_its_timeout(make_batcher, predict):
    batcher = make_batcher(max_batch_size=4, batch_timeout_s=0.0, concurrent_batches=2)
    predict.hold()
    first = batcher.submit(1)
    predict.wait_for_batch()
    partial = [batcher.submit(2), batcher.submit(3)]  # past their zero timeout, yet they keep waiting
    partial.append(batcher.submit(4))
    predict.gate.set()  # the first pass ends: what waits is sent, as one batch
    assert [c.wait(ANSWER_TIMEOUT_S).result for c in [first, *partial]] == [10, 20, 30, 40]
    assert predict.batches == [[1], [2, 3, 4]]


def test_close_answers_every_accepted_request_then_refuses(make_batcher, predict):
    batcher = make_batcher(max_batch_size=2)
    predict.hold()
    accepted = [batcher.submit(value) for value in range(5)]
    predict.wait_for_batch()
    closer = threading.Thread(target=batcher.close)
    closer.start()
    predict.gate.set()
    closer.join(ANSWER_TIMEOUT_S)
    assert [c.wait(ANSWER_TIMEOUT_S).result for c in accepted] == [0, 10, 20, 30, 40]
    with pytest.raises(BatcherClosed):
        batcher.submit(9)


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import time, gevent
    from service.batching.batcher import Batcher
    from service.batching.policy import FixedTimeout

    blocking_sleep = monkey.get_original("time", "sleep")

    def slow_predict(payloads):
        blocking_sleep(0.05)  # stands for a TF call: blocks its OS thread, never yields to gevent
        return [p + 1 for p in payloads]

    ticks = []
    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.005)

    batcher = Batcher(slow_predict, FixedTimeout(0.01), max_batch_size=16, max_queue=256, concurrent_batches=2)
    gevent.spawn(ticker)
    callers = [gevent.spawn(lambda v=v: batcher.submit(v).wait(10)) for v in range(64)]
    gevent.joinall(callers)
    outcomes = [g.value for g in callers]  # in the callers' order: joinall lists them as they finish
    assert [o.result for o in outcomes] == [v + 1 for v in range(64)], outcomes
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    print(max(o.batch_size for o in outcomes), batcher.stats.batches, round(max(gaps), 3))
    batcher.close()
    """
)


def test_under_gevent_forward_passes_run_off_the_event_loop():
    done = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    largest_batch, batches, longest_tick_gap_s = done.stdout.split()
    assert int(largest_batch) == 16 and int(batches) <= 5
    # Several 50 ms forward passes ran, yet the event loop never stalled for one of them.
    assert float(longest_tick_gap_s) < 0.04


def adaptive_policy(seconds_by_size=None, max_batch=4):
    observations = Observations(CostModel(seconds_by_size or {1: 0.010, 2: 0.012, 4: 0.014}))
    return AdaptivePolicy(observations, latency_slo_s=0.1, max_batch_size=max_batch), observations


def test_adaptive_sends_a_lone_request_at_once_and_explains_why(make_batcher):
    policy, observations = adaptive_policy()
    batcher = make_batcher(policy=policy, observations=observations)
    assert batcher.submit(1).wait(ANSWER_TIMEOUT_S).batch_size == 1
    described = batcher.describe()
    assert described["policy"] == "adaptive" and described["sent_because"]["nothing_coming"] == 1
    assert described["cost_model"]["batches_learned_from"] == 1  # it ran alone, so it taught the model
    assert described["mean_batch_size"] == 1 and described["mean_queue_wait_ms"] < 1000


def test_a_batch_is_full_at_the_preferred_size(make_batcher, predict):
    batcher = make_batcher(batch_timeout_s=60.0, max_batch_size=8, preferred_batch_size=4)
    predict.hold()
    completions = [batcher.submit(value) for value in range(6)]
    predict.wait_for_batch()
    assert predict.batches == [[0, 1, 2, 3]]  # sent at 4 without waiting for the 60 s timeout
    with pytest.raises(ValueError):
        batcher.submit(9, size=9)
    big = batcher.submit(8, size=8)  # a request above the preferred size is still served, alone
    predict.gate.set()
    assert [c.wait(ANSWER_TIMEOUT_S).batch_size for c in completions[:4]] == [4] * 4
    # [4, 5] is sent as full the moment the next request would not fit beside it.
    assert [c.wait(ANSWER_TIMEOUT_S).batch_size for c in completions[4:]] == [2, 2]
    assert big.wait(ANSWER_TIMEOUT_S).batch_size == 8


def test_closing_sends_what_is_being_formed_as_shutdown(make_batcher):
    batcher = make_batcher(batch_timeout_s=60.0, max_batch_size=8)
    waiting = batcher.submit(1)
    assert batcher.close(timeout_s=ANSWER_TIMEOUT_S)
    assert waiting.wait(ANSWER_TIMEOUT_S).result == 10
    assert batcher.stats.sent_because == {"shutdown": 1}


class RecordingObserver:
    """What metrics would be told: queue changes and finished passes."""

    def __init__(self):
        self.queue: list[tuple[int, int]] = []
        self.batches: list[tuple[str, int, int, bool]] = []

    def queue_changed(self, queued_instances, in_flight_instances):
        self.queue.append((queued_instances, in_flight_instances))

    def batch_ran(self, reason, instances, queue_waits_s, forward_s, failed):
        assert forward_s >= 0 and all(wait >= 0 for wait in queue_waits_s)
        self.batches.append((reason.value, instances, len(queue_waits_s), failed))


def test_the_observer_sees_the_queue_and_every_pass(make_batcher, predict):
    observer = RecordingObserver()
    batcher = make_batcher(max_batch_size=4, observer=observer)
    predict.hold()
    running = batcher.submit(1, size=2)
    predict.wait_for_batch()
    queued = [batcher.submit(value) for value in (2, 3)]
    assert observer.queue[-1] == (2, 4)  # two waiting, four accepted and unanswered
    predict.gate.set()
    for completion in [running, *queued]:
        completion.wait(ANSWER_TIMEOUT_S)
    assert batcher.close(timeout_s=ANSWER_TIMEOUT_S)
    assert [batch[1:] for batch in observer.batches] == [(2, 1, False), (2, 2, False)]
    assert observer.queue[-1] == (0, 0)


def test_the_observer_is_told_of_a_failed_pass(make_batcher):
    observer = RecordingObserver()

    def explode(payloads):
        raise RuntimeError("model exploded")

    batcher = make_batcher(forward=explode, observer=observer)
    with pytest.raises(RuntimeError):
        batcher.submit(1).wait(ANSWER_TIMEOUT_S)
    assert batcher.close(timeout_s=ANSWER_TIMEOUT_S)
    assert observer.batches == [("timeout", 1, 1, True)] and observer.queue[-1] == (0, 0)


def test_a_poison_request_fails_alone_and_its_batch_neighbours_are_answered(make_batcher, predict):
    passes = []

    def forward(payloads):
        passes.append(list(payloads))
        if "poison" in payloads:
            raise ValueError("input out of range")
        return [payload.upper() for payload in payloads]

    batcher = make_batcher(forward=forward, batch_timeout_s=60.0, max_batch_size=3)
    completions = [batcher.submit(payload) for payload in ("a", "poison", "b")]  # one full batch
    with pytest.raises(ValueError, match="out of range"):
        completions[1].wait(ANSWER_TIMEOUT_S)
    assert [completions[i].wait(ANSWER_TIMEOUT_S).result for i in (0, 2)] == ["A", "B"]
    assert passes == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]
    assert batcher.close(timeout_s=ANSWER_TIMEOUT_S)
    assert (batcher.stats.failed_batches, batcher.stats.failed_requests_alone) == (1, 1)


def test_a_request_whose_deadline_passed_in_the_queue_is_not_run(make_batcher, predict):
    clock = ManualClock()
    batcher = make_batcher(clock=clock, max_batch_size=4)
    predict.hold()
    running = batcher.submit(1)
    predict.wait_for_batch()
    late = batcher.submit(2, timeout_s=0.05)
    on_time = batcher.submit(3, timeout_s=5.0)
    no_deadline = batcher.submit(4)
    clock.now += 1.0  # the first pass took a second: 2's deadline is gone, 3's is not
    predict.gate.set()
    with pytest.raises(DeadlineExceeded, match="1000 ms in the queue"):
        late.wait(ANSWER_TIMEOUT_S)
    assert [c.wait(ANSWER_TIMEOUT_S).result for c in (running, on_time, no_deadline)] == [10, 30, 40]
    assert predict.batches == [[1], [3, 4]]  # no forward pass spent on 2
    assert batcher.close(timeout_s=ANSWER_TIMEOUT_S)
    assert batcher.stats.expired == 1 and batcher.queue_depth == 0
