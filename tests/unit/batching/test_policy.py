"""The batching policies, driven by simulated arrivals and a simulated model on a clock we control."""

from __future__ import annotations

import heapq
import math
import random
import statistics
from dataclasses import dataclass, field

import pytest

from service.batching.cost_model import CostModel
from service.batching.policy import AdaptivePolicy, Decision, FixedTimeout, FormingBatch, Observations, SendReason

MS = 0.001
# Shaped like the heavy model on this machine: memory-bound, so batch 2 costs 30% more than batch 1.
HEAVY_MS = {1: 16, 2: 21, 4: 24, 8: 26, 16: 32, 32: 44}
# A wider model on a slower machine: every pass reads all the weights, so its size hardly matters.
MEMORY_BOUND_MS = {1: 52, 2: 54, 4: 57, 8: 62, 16: 74, 32: 76}


def costs_of(table_ms: dict[int, float] = HEAVY_MS, slowdown: float = 1) -> CostModel:
    """A cost model seeded with `table_ms` (the heavy model's by default), on a machine `slowdown` times slower."""
    return CostModel({size: slowdown * ms * MS for size, ms in table_ms.items()})


def adaptive(
    slo_ms: float = 100, max_batch: int = 32, arriving_per_s: float = 0, costs: CostModel | None = None
) -> AdaptivePolicy:
    """The adaptive policy on `costs` (the heavy model's); `arriving_per_s` feeds it 0.1 s of arrivals, to t=0.1."""
    observations = Observations(costs or costs_of())
    for index in range(int(arriving_per_s * 0.1)):
        observations.arrived(index / arriving_per_s, 1)
    return AdaptivePolicy(observations, slo_ms * MS, max_batch)


@dataclass
class Simulation:
    """What a simulated worker did: per request its latency, per pass its size, why it went and when it ended."""

    latencies: list[float] = field(default_factory=list)
    queue_waits: list[float] = field(default_factory=list)  # from arrival to the start of its pass
    batches: list[tuple[int, SendReason]] = field(default_factory=list)
    pass_ends: list[float] = field(default_factory=list)
    idle_arrivals: list[float] = field(
        default_factory=list
    )  # latency of each batch's oldest, if it found the model idle

    @property
    def mean_batch(self) -> float:
        return statistics.fmean(size for size, _ in self.batches)

    def reasons(self) -> set[SendReason]:
        return {reason for _, reason in self.batches}

    @property
    def settled_batch(self) -> float:
        """The mean batch over the second half of the passes, once the policy has learned the load."""
        return statistics.fmean(size for size, _ in self.batches[len(self.batches) // 2 :])

    @property
    def settled_throughput_per_s(self) -> float:
        """Instances answered per second over the second half of the passes."""
        half = len(self.batches) // 2
        answered = sum(size for size, _ in self.batches[half + 1 :])
        return answered / (self.pass_ends[-1] - self.pass_ends[half])


@dataclass
class RequestReader:
    """The server's request thread: it reads the requests clients have sent one at a time, then queues them.

    A read takes an exponential time of mean `read_s`, `busy_factor` times longer when it starts
    while a forward pass holds the cores; with `read_s` 0 a request is queued the moment it is sent.
    """

    read_s: float
    busy_factor: float
    rng: random.Random
    sent: list[float] = field(default_factory=list)  # a heap of the times unread requests were sent
    free_at: float = 0.0
    read_ends_at: float | None = None  # of the read in progress

    def send(self, times: list[float]) -> None:
        for sent_at in times:
            heapq.heappush(self.sent, sent_at)

    def next_read(self, busy: bool) -> float:
        """When the next request will have been read (inf if none was sent)."""
        if not self.sent:
            return math.inf
        if self.read_s == 0:
            return self.sent[0]
        if self.read_ends_at is None:
            read_s = self.rng.expovariate(1 / self.read_s) * (self.busy_factor if busy else 1.0)
            self.read_ends_at = max(self.sent[0], self.free_at) + read_s
        return self.read_ends_at

    def take(self) -> None:
        self.free_at = self.next_read(busy=False)
        heapq.heappop(self.sent)
        self.read_ends_at = None


def simulate(policy, arrivals: list[float] | None = None, clients: int = 0, round_trip_s: float = 0.0,
             duration_s: float = 10.0, max_batch: int = 32, spread_s: float = 0.0, read_s: float = 0.0,
             busy_read_factor: float = 2.0, cost_noise: float = 0.0, costs: CostModel | None = None,
             seed: int = 1) -> Simulation:  # fmt: skip
    """Run `policy` against open-loop `arrivals` (times) or `clients` closed-loop clients.

    A closed-loop client sends its next request `round_trip_s` after its answer, the clients of
    one batch spread evenly over a further `spread_s` (answers are encoded one after another);
    client i sends its first one at i ms, so they do not start in step. With `read_s`, one
    request thread reads what they send in turn (RequestReader). Each pass takes the cost
    table's time, which the policy's cost model starts from (`costs`, for a policy without
    one), times a log-normal noise of spread `cost_noise` that the cost model learns from,
    as a real one does. The clock jumps from event to event: an arrival, the end of a pass,
    or the end of the policy's wait.
    """
    rng = random.Random(seed)
    observations = getattr(policy, "observations", None) or Observations(costs or costs_of())
    learned = observations.cost_model
    table_s = {size: learned.seconds(size) for size in learned.sizes}
    open_loop = sorted(arrivals or [])  # future arrival times, taken from the front
    reader = RequestReader(read_s, busy_read_factor, rng)
    reader.send([index * MS for index in range(clients)])

    def next_arrival(busy: bool) -> float:
        return min(open_loop[0] if open_loop else math.inf, reader.next_read(busy))

    def take_arrival(busy: bool) -> float:
        if open_loop and open_loop[0] <= reader.next_read(busy):
            return open_loop.pop(0)
        arrival = reader.next_read(busy)
        reader.take()
        return arrival

    model_free_since = 0.0
    queue: list[float] = []  # enqueue times of waiting requests
    result = Simulation()
    now, timed_out, wait_until = 0.0, False, None
    while now < duration_s:
        next_idle_arrival = next_arrival(busy=False)
        if not queue and next_idle_arrival == math.inf:
            break
        if queue:
            forming = FormingBatch(min(len(queue), max_batch), queue[0], 0, timed_out, model_free_since)
            decision = policy.decide(now, forming)
            if decision.send_because is not None or len(queue) >= max_batch:
                reason = decision.send_because or SendReason.FULL
                batch, queue = queue[:max_batch], queue[max_batch:]
                seconds = table_s[learned.padded(len(batch))] * (rng.lognormvariate(0, cost_noise) if cost_noise else 1)
                result.queue_waits += [now - enqueued for enqueued in batch]
                end = now + seconds
                while next_arrival(busy=True) < end:  # arrivals during the pass just queue up
                    arrival = take_arrival(busy=True)
                    observations.arrived(arrival, 1)
                    queue.append(arrival)
                now = end
                observations.pass_ended(now, len(batch), seconds, True)
                result.batches.append((len(batch), reason))
                result.pass_ends.append(now)
                result.latencies += [now - enqueued for enqueued in batch]
                if batch[0] >= model_free_since:
                    result.idle_arrivals.append(now - batch[0])
                model_free_since = now
                if clients:
                    reader.send([now + round_trip_s + spread_s * i / len(batch) for i in range(len(batch))])
                timed_out, wait_until = False, None
                continue
            wait_until = decision.wait_until
        if wait_until is not None and wait_until < next_idle_arrival:
            now, timed_out = wait_until, True
            continue
        if next_idle_arrival == math.inf:
            break
        now = next_idle_arrival
        while next_arrival(busy=False) <= now:  # what arrives together is queued before the next decision
            observations.arrived(take_arrival(busy=False), 1)
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


@pytest.mark.parametrize(
    "table_ms, slo_ms, rates", [(HEAVY_MS, 100, (20, 50, 300, 700)), (MEMORY_BOUND_MS, 0, (5, 50, 150, 300))]
)
def test_it_keeps_pace_with_the_best_fixed_timeout_on_poisson_loads(table_ms, slo_ms, rates):
    # On the memory-bound model too, where a batch of 32 costs hardly more than one of 16: open-loop
    # clients do not come back sooner for a fuller batch, so waiting for one would only add latency.
    for rate in rates:
        arrivals = poisson(rate, 20, seed=rate)
        policy = adaptive(slo_ms, costs=costs_of(table_ms))
        ours = statistics.fmean(simulate(policy, arrivals=arrivals, duration_s=20).latencies)
        best_fixed = min(
            statistics.fmean(
                simulate(
                    FixedTimeout(timeout * MS), arrivals=arrivals, duration_s=20, costs=costs_of(table_ms)
                ).latencies
            )
            for timeout in (0, 1, 2, 5, 10, 20)
        )
        assert ours <= 1.1 * best_fixed, (rate, ours, best_fixed)
        assert not policy.observations.arrivals.closed_loop


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


# The live server on models/heavy.keras (issue 13) reads request bodies on one thread, one after
# another: about 1/64 of a full pass each while the model is idle, twice that while a pass takes the
# cores. So the clients of a half batch come back over 20-40 ms of an 85 ms pass (the echo it learned:
# 63% within a quarter pass, 89% within half), not all at once; and pass times vary by some 10%.
READ_FRACTION_OF_FULL_PASS = 1 / 64
ROUND_TRIP_FRACTION_OF_FULL_PASS = 1 / 40


def read_in_turn(table_ms: dict[int, float], clients: int, slowdown: float = 1, seed: int = 1) -> Simulation:
    """Closed-loop `clients` of an adaptive policy without objective, their requests read in turn as live."""
    costs = costs_of(table_ms, slowdown)
    full_pass_s = costs.full_pass_seconds()
    return simulate(
        adaptive(slo_ms=0, costs=costs),
        clients=clients,
        round_trip_s=ROUND_TRIP_FRACTION_OF_FULL_PASS * full_pass_s,
        read_s=READ_FRACTION_OF_FULL_PASS * full_pass_s,
        cost_noise=0.1,
        duration_s=10 * slowdown,
        seed=seed,
    )


@pytest.mark.parametrize("clients", [8, 32])
@pytest.mark.parametrize("table_ms", [HEAVY_MS, MEMORY_BOUND_MS], ids=["heavy", "memory-bound"])
@pytest.mark.parametrize("slowdown", [1, 3])
def test_a_closed_loop_read_in_turn_serves_near_the_most_it_can(table_ms, clients, slowdown):
    # At most, a loop serves everyone in every pass, each pass then waiting for the clients' round trip
    # and for their requests to be read; or two halves take turns, each read while the other's pass
    # runs. On the memory-bound model a half costs nearly a full pass, so everyone at once is best by
    # far, and it is what the one-step latency account missed: 0.83-0.88 of the most, batches of 20-21
    # at 32 clients, each half waiting behind a pass of the other (as live: 0.46 of the in-process
    # limit, 72 of 74 batches `nothing_coming`). Now 0.96-1.0; on the heavy model 0.95-0.97 (was 0.83-
    # 0.85), where at 32 clients the halves are the better of the two, reading 32 taking so long.
    result = read_in_turn(table_ms, clients, slowdown)
    full_pass_s = slowdown * table_ms[32] * MS
    read_back_s = (ROUND_TRIP_FRACTION_OF_FULL_PASS + clients * READ_FRACTION_OF_FULL_PASS) * full_pass_s
    everyone_per_s = clients / (slowdown * table_ms[clients] * MS + read_back_s)
    halves_per_s = clients / 2 / (slowdown * table_ms[clients // 2] * MS)
    assert result.settled_throughput_per_s >= 0.92 * max(everyone_per_s, halves_per_s)
    if table_ms is MEMORY_BOUND_MS:
        assert result.settled_batch > 0.85 * clients


def test_a_closed_loop_larger_than_a_batch_keeps_the_model_busy():
    # A backlog fills every batch, so the policy is not asked; this guards that nothing holds one back.
    result = read_in_turn(MEMORY_BOUND_MS, 128)
    assert result.settled_throughput_per_s >= 0.9 * 32 / (MEMORY_BOUND_MS[32] * MS)


@pytest.mark.parametrize("table_ms", [HEAVY_MS, MEMORY_BOUND_MS], ids=["heavy", "memory-bound"])
def test_a_lone_closed_loop_client_is_never_held(table_ms):
    result = read_in_turn(table_ms, 1)
    assert result.mean_batch == 1 and result.reasons() == {SendReason.NOTHING_COMING}
    assert max(result.queue_waits) == 0  # answered a batch-1 pass after it arrived


def half_batches_taking_turns(passes: int = 40) -> tuple[AdaptivePolicy, float]:
    """The adaptive policy on the memory-bound table after `passes` passes of 16, each client back in turn
    2-38 ms after its pass; and when the last pass ended."""
    policy = adaptive(slo_ms=0, costs=costs_of(MEMORY_BOUND_MS))
    observations, now = policy.observations, 0.0
    for _ in range(passes):
        observations.pass_ended(now, 16, MEMORY_BOUND_MS[16] * MS, True)
        for client in range(16):
            observations.arrived(now + (2 + 2.4 * client) * MS, 1)
        now += MEMORY_BOUND_MS[16] * MS
    observations.pass_ended(now, 16, MEMORY_BOUND_MS[16] * MS, True)
    return policy, now


def test_in_a_closed_loop_a_half_batch_waits_for_the_half_on_its_way_back():
    policy, now = half_batches_taking_turns()
    assert policy.observations.arrivals.closed_loop
    # The other half is queued as the pass that answered this half ends. Sending it now would serve 16 in
    # a pass that could serve 32, and those 16 would come back behind the next pass of 16.
    decision = policy.decide(now, FormingBatch(16, now - 30 * MS, 0, False, model_free_since=now))
    assert decision.send_because is None
    # A wait that runs out while most are still out says they are late, not that they are not coming.
    policy.observations.arrived(now + 5 * MS, 1)
    decision = policy.decide(now + 10 * MS, FormingBatch(17, now - 30 * MS, 0, True, model_free_since=now))
    assert decision.send_because is None
    # Once all are back but a straggler, the wait for it is not worth the throughput lost meanwhile.
    for index in range(14):
        policy.observations.arrived(now + (11 + index) * MS, 1)
    decision = policy.decide(now + 25 * MS, FormingBatch(31, now - 30 * MS, 0, False, model_free_since=now))
    assert decision.send_because is SendReason.NOTHING_COMING


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
