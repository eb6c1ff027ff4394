"""PassTurns: the forward passes of several models' batchers, shared fairly by pass seconds."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from service.batching.turns import PassTurns
from tests.support import wait_until


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def waiting_thread(turns: PassTurns, model: str, order: list[str]) -> threading.Thread:
    def run() -> None:
        with turns.turn(model):
            order.append(model)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def waiters(turns: PassTurns) -> int:
    return len(turns._waiting)


def test_turns_within_the_slots_do_not_wait():
    turns = PassTurns(slots=2)
    with turns.turn("a"), turns.turn("b"):
        pass  # a second turn while the first runs: no wait, or this test would hang


def test_a_freed_turn_goes_to_the_least_served_model_waiting_not_the_oldest_waiter():
    clock = FakeClock()
    turns, order = PassTurns(slots=1, clock=clock), []
    with turns.turn("flooded"):
        first = waiting_thread(turns, "flooded", order)
        wait_until(lambda: waiters(turns) == 1, 10, "the flooded model's second batch waits")
        second = waiting_thread(turns, "quiet", order)
        wait_until(lambda: waiters(turns) == 2, 10, "the quiet model's batch waits behind it")
        clock.now += 1.0  # the running pass took a second: the flooded model has used more
    for thread in (first, second):
        thread.join(10)
    assert order == ["quiet", "flooded"]


def test_time_a_model_was_idle_is_not_saved_up_as_credit():
    clock = FakeClock()
    turns = PassTurns(slots=1, clock=clock)
    for _ in range(10):  # the busy model runs alone for ten seconds of passes
        with turns.turn("busy"):
            clock.now += 1.0
    with turns.turn("busy"):
        order: list[str] = []
        late = waiting_thread(turns, "late", order)  # arrives while the busy model is served
        wait_until(lambda: waiters(turns) == 1, 10, "the late model waits")
        assert turns.used_s("late") == pytest.approx(10.0)  # level with the busy one, not ten passes ahead
        clock.now += 1.0
    late.join(10)
    assert order == ["late"]


def test_a_model_flooded_by_many_threads_keeps_about_its_share_while_another_has_work():
    turns, passes, stop = PassTurns(slots=1), Counter(), threading.Event()

    def loop(model: str) -> None:
        while not stop.is_set():
            with turns.turn(model):
                time.sleep(0.002)
                passes[model] += 1

    threads = [threading.Thread(target=loop, args=("flooded",), daemon=True) for _ in range(4)]
    threads.append(threading.Thread(target=loop, args=("steady",), daemon=True))
    for thread in threads:
        thread.start()
    wait_until(lambda: passes.total() >= 200, 60, "200 passes")
    stop.set()
    for thread in threads:
        thread.join(10)
    # First come, first served would give the steady model one turn in five (its one thread among five).
    assert passes["steady"] >= 0.4 * passes.total(), passes


def test_a_model_alone_takes_every_slot():
    turns, running, most, lock = PassTurns(slots=2), [0], [0], threading.Lock()
    barrier = threading.Barrier(2, timeout=10)

    def pass_() -> None:
        with turns.turn("alone"):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            barrier.wait()  # both passes run at once, or the barrier times out
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=pass_) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most[0] == 2


def test_a_model_running_a_pass_leaves_the_last_slot_to_another_in_use():
    clock = FakeClock()
    turns, order = PassTurns(slots=2, clock=clock), []
    with turns.turn("light"):
        clock.now += 0.01
    with turns.turn("heavy"):
        clock.now += 0.05  # heavy's passes take 50 ms: light counts as in use for 100 ms after its last
    with turns.turn("heavy"):
        second = waiting_thread(turns, "heavy", order)
        wait_until(lambda: waiters(turns) == 1, 10, "heavy's second pass waits: light was in use just now")
        with turns.turn("light"):  # and light's pass starts at once beside heavy's
            order.append("light")
        assert waiters(turns) == 1 and order == ["light"]
        clock.now += 0.2  # light quiet for longer than two of heavy's passes
        wait_until(lambda: order == ["light", "heavy"], 10, "heavy's second pass takes the slot once light is quiet")
    second.join(10)


def test_a_model_that_may_run_does_not_wait_behind_one_that_may_not():
    clock = FakeClock()
    turns, order = PassTurns(slots=2, clock=clock), []
    with turns.turn("light"):
        clock.now += 30.0  # light's passes take 30 s: waiting in line, it would look again after 60 s
    with turns.turn("heavy"):
        clock.now += 0.05
    with turns.turn("heavy"):
        second = waiting_thread(turns, "heavy", order)
        wait_until(lambda: waiters(turns) == 1, 10, "heavy's second pass waits: light was in use just now")
        light = waiting_thread(turns, "light", order)
        wait_until(lambda: order == ["light"], 5, "light's pass starts at once, not behind heavy's waiting one")
    for thread in (second, light):
        thread.join(10)
    assert order == ["light", "heavy"]
