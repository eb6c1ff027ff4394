"""The arrival estimator: a decaying rate, and the echo of answered batches from closed-loop clients."""

from __future__ import annotations

import pytest

from service.arrivals import ArrivalEstimator

MS = 0.001


def test_the_rate_follows_arrivals_and_decays_in_silence():
    arrivals = ArrivalEstimator(time_constant_s=0.5)
    for index in range(1000):
        arrivals.arrived(index * MS, 1)  # 1,000 a second for a second
    assert arrivals.rate(1.0) == pytest.approx(1000, rel=0.2)
    assert arrivals.rate(3.0) < 20  # two seconds of silence
    assert arrivals.expected(3.0, 0.01) < 0.2


def test_the_echo_of_answered_clients_is_learned_and_counted_down():
    arrivals = ArrivalEstimator()
    now = 0.0
    for _ in range(30):  # each pass answers 4 clients, who come back 1.5 ms later
        arrivals.pass_ended(now, 4)
        for _ in range(4):
            arrivals.arrived(now + 1.5 * MS, 1)
        now += 30 * MS
    arrivals.pass_ended(now, 4)
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
