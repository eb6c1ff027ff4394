"""The batching policies, driven by simulated arrivals and a simulated model on a clock we control."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

import pytest

from service.batch_policy import AdaptivePolicy, Decision, FixedTimeout, FormingBatch, Observations, SendReason
from service.cost_model import CostModel

MS = 0.001
# Shaped like the heavy model on this machine: memory-bound, so batch 2 costs 30% more than batch 1.
HEAVY_MS = {1: 16, 2: 21, 4: 24, 8: 26, 16: 32, 32: 44}
# A wider model on a slower machine: every pass reads all the weights, so its size hardly matters.
MEMORY_BOUND_MS = {1: 52, 2: 54, 4: 57, 8: 62, 16: 74, 32: 76}


def heavy_costs() -> CostModel:
    return CostModel({size: ms * MS for size, ms in HEAVY_MS.items()})


def adaptive(slo_ms: float = 100, max_batch: int = 32, arriving_per_s: float = 0) -> AdaptivePolicy:
    """The adaptive policy on the heavy cost table; `arriving_per_s` feeds it 0.1 s of such arrivals, up to t=0.1."""
    observations = Observations(heavy_costs())
    for index in range(int(arriving_per_s * 0.1)):
        observations.arrived(index / arriving_per_s, 1)
    return AdaptivePolicy(observations, slo_ms * MS, max_batch)


@dataclass
class Simulation:
    """One worker, one forward pass at a time, its cost taken from the same cost table."""

    latencies: list[float] = field(default_factory=list)
    batches: list[tuple[int, SendReason]] = field(default_factory=list)
    idle_arrivals: list[float] = field(
        default_factory=list
    )  # latency of each batch's oldest, if it found the model idle

    @property
    def mean_batch(self) -> float:
        return statistics.fmean(size for size, _ in self.batches)

    def reasons(self) -> set[SendReason]:
        return {reason for _, reason in self.batches}


def simulate(policy, arrivals: list[float] | None = None, clients: int = 0, round_trip_s: float = 0.0,
             duration_s: float = 10.0, max_batch: int = 32, spread_s: float = 0.0) -> Simulation:  # fmt: skip
    """Run `policy` against open-loop `arrivals` (times) or `clients` closed-loop clients.

    A closed-loop client sends its next request `round_trip_s` after its answer, the clients of
    one batch spread evenly over a further `spread_s` (answers are encoded one after another);
    client i sends its first one at i ms, so they do not start in step. The clock
    jumps from event to event: an arrival, the end of a pass, or the end of the policy's wait.
    """
    observations = getattr(policy, "observations", None) or Observations(heavy_costs())
    costs = observations.cost_model  # the model runs as fast as the policy believes
    pending = sorted(arrivals or []) + [index * MS for index in range(clients)]  # future arrival times
    pending.sort()
    model_free_since = 0.0
    queue: list[float] = []  # enqueue times of waiting requests
    result = Simulation()
    now, timed_out, wait_until = 0.0, False, None
    while now < duration_s and (pending or queue):
        next_arrival = pending[0] if pending else float("inf")
        if queue:
            forming = FormingBatch(min(len(queue), max_batch), queue[0], 0, timed_out, model_free_since)
            decision = policy.decide(now, forming)
            if decision.send_because is not None or len(queue) >= max_batch:
                reason = decision.send_because or SendReason.FULL
                batch, queue = queue[:max_batch], queue[max_batch:]
                seconds = costs.seconds(len(batch))
                end = now + seconds
                while pending and pending[0] < end:  # arrivals during the pass just queue up
                    arrival = pending.pop(0)
                    observations.arrived(arrival, 1)
                    queue.append(arrival)
                now = end
                observations.pass_ended(now, len(batch), seconds, True)
                result.batches.append((len(batch), reason))
                result.latencies += [now - enqueued for enqueued in batch]
                if batch[0] >= model_free_since:
                    result.idle_arrivals.append(now - batch[0])
                model_free_since = now
                if clients:
                    returns = [now + round_trip_s + spread_s * i / len(batch) for i in range(len(batch))]
                    pending = sorted(pending + returns)
                timed_out, wait_until = False, None
                continue
            wait_until = decision.wait_until
        if wait_until is not None and wait_until < next_arrival:
            now, timed_out = wait_until, True
            continue
        if next_arrival == float("inf"):
            break
        now = next_arrival
        while pending and pending[0] <= now:  # what arrives together is queued before the next decision
            observations.arrived(pending.pop(0), 1)
            queue.append(now)
        timed_out = False
    return result


def poisson(rate_per_s: float, duration_s: float, seed: int = 1) -> list[float]:
    rng, times, now = random.Random(seed), [], 0.0
    while True:
        now += rng.expovariate(rate_per_s)
        if now > duration_s:
            return times
        times.append(now)


def test_a_lone_request_on_an_idle_worker_is_sent_at_once():
    policy = adaptive()
    policy.observations.arrived(5.0, 1)
    assert policy.decide(5.0, FormingBatch(1, 5.0, 0, False)) == Decision(SendReason.NOTHING_COMING)


def test_light_traffic_is_served_at_batch_1_latency():
    result = simulate(adaptive(), arrivals=poisson(5, 20), duration_s=20)
    assert result.reasons() == {SendReason.NOTHING_COMING}
    assert statistics.median(result.latencies) == pytest.approx(HEAVY_MS[1] * MS)


def test_one_closed_loop_client_never_waits():
    result = simulate(adaptive(), clients=1, round_trip_s=1 * MS)
    assert result.mean_batch == 1 and result.reasons() == {SendReason.NOTHING_COMING}
    assert max(result.latencies) == pytest.approx(HEAVY_MS[1] * MS)


def test_batches_grow_with_the_arrival_rate():
    mean_batches = [simulate(adaptive(), arrivals=poisson(rate, 10)).mean_batch for rate in (20, 200, 1000)]
    assert mean_batches[0] < 1.5
    assert mean_batches[0] < mean_batches[1] < mean_batches[2]
    assert mean_batches[2] > 16


def test_under_heavy_arrival_an_idle_worker_waits_for_more():
    decision = adaptive(arriving_per_s=2000).decide(0.1, FormingBatch(2, 0.1, 0, False))
    assert decision.send_because is None and 0.1 < decision.wait_until <= 0.1 + 16 * MS


def test_it_keeps_pace_with_the_best_fixed_timeout_on_poisson_loads():
    for rate in (20, 50, 300, 700):
        arrivals = poisson(rate, 20, seed=rate)
        ours = statistics.fmean(simulate(adaptive(), arrivals=arrivals, duration_s=20).latencies)
        best_fixed = min(
            statistics.fmean(simulate(FixedTimeout(timeout * MS), arrivals=arrivals, duration_s=20).latencies)
            for timeout in (0, 1, 2, 5, 10, 20)
        )
        assert ours <= 1.1 * best_fixed, (rate, ours, best_fixed)


def test_closed_loop_clients_about_to_return_are_waited_for():
    # 8 clients: with a short fixed timeout the batches split in two halves that alternate;
    # the adaptive policy learns that answered clients come back within a round trip.
    fixed = simulate(FixedTimeout(1 * MS), clients=8, round_trip_s=2 * MS)
    ours = simulate(adaptive(), clients=8, round_trip_s=2 * MS)
    assert fixed.mean_batch < 5
    assert ours.mean_batch > 7
    assert statistics.fmean(ours.latencies) < 0.8 * statistics.fmean(fixed.latencies)


@pytest.mark.parametrize("slowdown", [1, 3])
def test_a_closed_loop_settles_into_full_batches_however_long_its_round_trip(slowdown):
    # 32 clients on a memory-bound model (a pass of 16 costs a pass of 32), their answers back
    # over 2-20 ms: longer than the 16 ms a fixed horizon allowed. The time they spent behind the
    # running pass does not count against the hold, and the waits scale with the pass, so the
    # batches stay whole instead of alternating halves, on a machine 3x slower too.
    policy = adaptive(slo_ms=0)
    policy.observations.cost_model = CostModel({size: slowdown * ms * MS for size, ms in MEMORY_BOUND_MS.items()})
    result = simulate(policy, clients=32, round_trip_s=slowdown * 2 * MS, spread_s=slowdown * 18 * MS)
    settled = [size for size, _ in result.batches[len(result.batches) // 2 :]]
    assert statistics.fmean(settled) > 28


def test_the_latency_objective_caps_the_wait():
    # The oldest has waited 3.5 ms and a batch of 2 takes 21 ms: with a 20 ms objective it goes now.
    decision = adaptive(slo_ms=20, arriving_per_s=2000).decide(0.1, FormingBatch(2, 0.1 - 3.5 * MS, 0, False))
    assert decision == Decision(SendReason.DEADLINE)
    # With 30 ms it may wait, but only until 30 - 21 = 9 ms after the oldest arrived.
    decision = adaptive(slo_ms=30, arriving_per_s=2000).decide(0.1, FormingBatch(2, 0.1 - 5 * MS, 0, False))
    assert decision.send_because is None and decision.wait_until <= 0.1 - 5 * MS + (30 - 21) * MS


def test_without_an_objective_a_batch_is_held_at_most_one_full_pass():
    policy = adaptive(slo_ms=0, arriving_per_s=2000)
    assert policy.describe()["latency_slo_ms"] is None
    full_pass_s = HEAVY_MS[32] * MS  # what this worker measures, not a fixed time
    assert policy.latest_send(FormingBatch(2, 0.05, 0, False)) == pytest.approx(0.05 + full_pass_s)
    held_a_pass = policy.decide(0.1, FormingBatch(2, 0.1 - full_pass_s, 0, False))
    assert held_a_pass == Decision(SendReason.DEADLINE)
    assert policy.decide(0.1, FormingBatch(2, 0.1 - 0.5 * full_pass_s, 0, False)).wait_until is not None


def test_no_request_that_finds_the_model_idle_is_held_past_the_objective():
    # Requests that arrive during a pass wait for it whatever the policy; the others are the policy's to hold.
    # A joiner can still raise the pass's cost after the last decision: by at most one step of the table.
    result = simulate(adaptive(slo_ms=20), arrivals=poisson(100, 20), duration_s=20)
    assert SendReason.DEADLINE in result.reasons()
    assert len(result.idle_arrivals) > 100
    assert statistics.quantiles(result.idle_arrivals, n=20)[-1] <= 20 * MS + 1e-9
    assert max(result.idle_arrivals) <= (20 + HEAVY_MS[2] - HEAVY_MS[1]) * MS + 1e-9


def test_after_a_burst_a_lone_request_is_sent_at_once_again():
    policy = adaptive()
    burst = poisson(2000, 1.0)
    result = simulate(policy, arrivals=[*burst, 3.0], duration_s=4)
    assert result.batches[0][0] <= 2 and max(size for size, _ in result.batches) >= 16
    assert result.batches[-1] == (1, SendReason.NOTHING_COMING)
    assert result.latencies[-1] == pytest.approx(HEAVY_MS[1] * MS)


def test_a_running_pass_holds_a_partial_batch_under_both_policies():
    for policy in (adaptive(), FixedTimeout(0)):
        assert policy.decide(1.0, FormingBatch(3, 0.0, 1, False)).send_because is None


def test_the_wait_runs_out_when_what_was_expected_does_not_come():
    decision = adaptive(arriving_per_s=2000).decide(0.1, FormingBatch(2, 0.1, 0, True))
    assert decision == Decision(SendReason.TIMEOUT)


def test_fixed_timeout_waits_for_the_oldest_request_s_timeout():
    policy = FixedTimeout(5 * MS)
    assert policy.decide(1.0, FormingBatch(1, 1.0, 0, False)).wait_until == pytest.approx(1.005)
    assert policy.decide(1.006, FormingBatch(1, 1.0, 0, True)).send_because is SendReason.TIMEOUT
