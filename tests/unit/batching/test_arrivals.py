"""The arrival estimator: a decaying rate, and the echo of answered batches from closed-loop clients."""

from __future__ import annotations

import random

import pytest

from service.batching.arrivals import ArrivalEstimator

MS = 0.001


def test_the_rate_follows_arrivals_and_decays_in_silence():
    arrivals = ArrivalEstimator(time_constant_s=0.5)
    for index in range(1000):
        arrivals.arrived(index * MS, 1)  # 1,000 a second for a second
    assert arrivals.rate(1.0) == pytest.approx(1000, rel=0.2)
    assert arrivals.rate(3.0) < 20  # two seconds of silence
    assert arrivals.expected(3.0, 0.01) < 0.2


def four_clients_in_a_closed_loop() -> tuple[ArrivalEstimator, float]:
    """An estimator after 30 passes that each answer 4 clients, who come back 1.5 ms later; and the last pass's end."""
    arrivals = ArrivalEstimator()
    now = 0.0
    for _ in range(30):
        arrivals.pass_ended(now, 4)
        for _ in range(4):
            arrivals.arrived(now + 1.5 * MS, 1)
        now += 30 * MS
    arrivals.pass_ended(now, 4)
    return arrivals, now


def test_the_echo_of_answered_clients_is_learned_and_counted_down():
    arrivals, now = four_clients_in_a_closed_loop()
    assert arrivals.expected(now, 2 * MS) == pytest.approx(4, abs=0.2)
    assert arrivals.expected(now, 0.5 * MS) < 0.5  # too soon for them
    arrivals.arrived(now + 1.5 * MS, 3)
    assert arrivals.expected(now + 1.5 * MS, 2 * MS) == pytest.approx(1, abs=0.2)  # one still to come
    # Past the echo, expectations come from the rate: 4 clients every 30 ms.
    assert arrivals.expected(now + 20 * MS, 10 * MS) < 4


def test_a_first_window_cut_short_starts_from_the_rate():
    arrivals = ArrivalEstimator()
    for index in range(100):
        arrivals.arrived(index * MS, 1)
    arrivals.pass_ended(0.1, 10)
    arrivals.pass_ended(0.1 + 1 * MS, 10)  # the first window was watched for 1 ms only
    assert arrivals.describe(0.1)["echo_within_ms"]["16"] > 0


def poisson_times(rate_per_s: float, duration_s: float, seed: int = 1) -> list[float]:
    rng, times, now = random.Random(seed), [], 0.0
    while (now := now + rng.expovariate(rate_per_s)) < duration_s:
        times.append(now)
    return times


def test_closed_loop_clients_are_told_from_open_loop_traffic():
    # Open loop: Poisson arrivals, passes ending every 30 ms whatever arrives.
    open_loop = ArrivalEstimator()
    arrivals = poisson_times(300, 3.0)
    for index in range(100):
        now = index * 30 * MS
        while arrivals and arrivals[0] < now:
            open_loop.arrived(arrivals.pop(0), 1)
        open_loop.pass_ended(now, 9, echo_window_s=40 * MS)
    assert not open_loop.closed_loop and open_loop.describe(3.0)["closed_loop"] is False
    assert open_loop.still_coming(now + 1 * MS, 10 * MS) == 0  # so the policy serves it as before
    # Closed loop: the 8 clients of each pass come back 2-9 ms after it.
    closed_loop = ArrivalEstimator()
    for index in range(100):
        now = index * 30 * MS
        closed_loop.pass_ended(now, 8, echo_window_s=40 * MS)
        for client in range(8):
            closed_loop.arrived(now + (2 + client) * MS, 1)
    assert closed_loop.closed_loop


def test_clients_not_back_yet_are_still_coming():
    arrivals, now = four_clients_in_a_closed_loop()
    assert arrivals.closed_loop
    assert arrivals.still_coming(now, 2 * MS) == pytest.approx(4, abs=0.2)
    # 3 ms on only one is back: by the echo the rest were due, but in a closed loop they are late, not gone.
    arrivals.arrived(now + 1.5 * MS, 1)
    assert arrivals.expected(now + 3 * MS, 10 * MS) < 0.5
    assert arrivals.still_coming(now + 3 * MS, 10 * MS) == pytest.approx(3 * 10 / 13, abs=0.2)
    assert arrivals.still_coming(now + 3 * MS, 13 * MS) == pytest.approx(3, abs=0.01)
    assert arrivals.still_coming(now + 16 * MS, 10 * MS) == 0  # past the window


def test_the_next_pass_ending_first_still_teaches_the_late_bins():
    # Passes every 10 ms against a 16 ms window: the last bin (8-16 ms) is never watched to its end.
    arrivals = ArrivalEstimator()
    for index in range(50):  # a first window with a crowd arriving late, from which that bin starts high
        arrivals.arrived(index * 0.2 * MS, 1)
    arrivals.pass_ended(10 * MS, 4)
    for index in range(1, 60):
        now = (10 + 10 * index) * MS
        arrivals.pass_ended(now, 4)
        for client in range(4):
            arrivals.arrived(now + (1 + client) * MS, 1)
    echo = arrivals.describe(now)["echo_within_ms"]
    assert echo["16"] - echo["8"] < 0.05  # nobody comes after 8 ms, and the estimator has learned it
    assert echo["8"] == pytest.approx(1, abs=0.05)


def test_a_first_window_that_answered_one_request_counts_for_one():
    arrivals = ArrivalEstimator()
    arrivals.pass_ended(0.0, 1, echo_window_s=40 * MS)
    for client in range(31):  # the crowd arriving behind a lone first request
        arrivals.arrived((1 + client) * 0.1 * MS, 1)
    now = 0.0
    for _ in range(5):  # then passes of 32 that each see their 32 come back
        now += 50 * MS
        arrivals.pass_ended(now, 32, echo_window_s=40 * MS)
        for client in range(32):
            arrivals.arrived(now + (1 + client) * 0.1 * MS, 1)
    arrivals.pass_ended(now + 50 * MS, 32, echo_window_s=40 * MS)
    # (31 + 5 * 32) / (1 + 5 * 32) come back per answered, not 31 at first and a slow decay from there.
    assert arrivals.describe(now)["echo_within_ms"]["40"] == pytest.approx(191 / 161, abs=0.001)
