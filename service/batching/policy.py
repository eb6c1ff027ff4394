"""When to send the batch being formed: after a fixed timeout, or when waiting longer stops paying.

The batcher sends a batch on its own once it is full. For a partial batch it asks its
policy, every time the queue runs dry and again whenever a request arrives, a pass ends or
the policy's own wait runs out: send now (and why), or wait until when.

`FixedTimeout` is what TensorFlow Serving and Triton do: the oldest request waits at most
`timeout` for others to join it. Right for one load, wrong for others.

`AdaptivePolicy` weighs, at each decision, the latency of sending now against that of
waiting h more for the instances the worker expects in that time (ArrivalEstimator), using
the forward-pass cost it has measured at every batch size (CostModel). Sending now costs
each joiner the rest of this pass plus a pass of its own; waiting costs everyone already
queued h, and everyone the difference between the bigger and the smaller pass. It waits
for the horizon with the largest expected saving, and sends at once when none saves
anything (a lone request on an idle worker, or a model so fast that a pass is over before
anyone else arrives). Like Clipper it serves a latency objective, but it does not probe
for the batch size with AIMD: the cost of every size is measured. Like BentoML it uses a
cost model, but it also knows that a pass already running holds the next batch anyway,
that padding makes sizes between compiled ones free, and when closed-loop clients are
about to come back.

In a closed loop (clients who send again when answered, as the estimator tells) one step
of latency is the wrong account: the clients who miss a pass come back behind it, the ones
it answered come back behind the next, and the passes stay split in halves, each costing
nearly a full one on a memory-bound model. Every client's latency there is the loop's
throughput, so while the last pass's clients are still on their way back the policy waits
for as long as the batch would then serve more instances per second of model time (held,
waited and run) than it does now, and sends as soon as the rest are not worth their wait.
The same measured costs and learned echo decide it, so nothing is tuned to one machine;
open-loop traffic is served as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from service.batching.arrivals import ArrivalEstimator
from service.batching.cost_model import CostModel

# Waits the adaptive policy considers, as fractions of a full pass on this worker: waiting longer
# than a pass for more never pays, and a slow machine's round trips are long in proportion.
HORIZON_FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


class SendReason(StrEnum):
    FULL = "full"  # the batch reached its size
    DEADLINE = "deadline"  # its oldest request has been held as long as it may be (LATENCY_SLO_MS, or a full pass)
    NOTHING_COMING = "nothing_coming"  # no arrival expected soon enough to be worth waiting for
    TIMEOUT = "timeout"  # the wait ran out: BATCH_TIMEOUT_MS, or arrivals the adaptive policy expected did not come
    SHUTDOWN = "shutdown"  # the batcher is closing and sends what it holds
    BACKGROUND = "background"  # no online request: a batch of bulk or job instances (batching/background.py)


@dataclass(frozen=True)
class Decision:
    """Send now (`send_because` set), or wait until `wait_until` (None: until something arrives or a pass ends)."""

    send_because: SendReason | None = None
    wait_until: float | None = None


@dataclass(frozen=True)
class FormingBatch:
    """What the policy sees of the batch being formed when the queue has run dry."""

    instances: int
    oldest_enqueued_at: float
    passes_running: int
    timed_out: bool  # woken because the last decision's wait ran out, not by an arrival
    model_free_since: float = 0.0  # when the last forward pass ended: a partial batch could not go before

    @property
    def held_since(self) -> float:
        """Since when the policy alone has kept this batch back (not the passes it waited for)."""
        return max(self.oldest_enqueued_at, self.model_free_since)


class Observations:
    """What a worker measures about itself for its policy and its admission: pass costs and arrivals."""

    def __init__(self, cost_model: CostModel, arrivals: ArrivalEstimator | None = None):
        self.cost_model = cost_model
        self.arrivals = arrivals or ArrivalEstimator()

    def arrived(self, now: float, instances: int) -> None:
        self.arrivals.arrived(now, instances)

    def pass_ended(self, now: float, instances: int, seconds: float, ran_alone: bool) -> None:
        if ran_alone:
            self.cost_model.observe(instances, seconds)
        else:
            self.cost_model.observe_beside(instances, seconds)
        self.arrivals.pass_ended(now, instances, echo_window_s=self.cost_model.full_pass_seconds())

    def describe(self, now: float) -> dict:
        return {"cost_model": self.cost_model.describe(), "arrivals": self.arrivals.describe(now)}


class BatchPolicy(Protocol):
    name: str

    def decide(self, now: float, batch: FormingBatch) -> Decision: ...

    def describe(self) -> dict: ...


class FixedTimeout:
    """Send when the oldest request has waited `timeout_s`; while a pass runs, wait for it to end."""

    name = "fixed"

    def __init__(self, timeout_s: float):
        if timeout_s < 0:
            raise ValueError("timeout_s must be >= 0")
        self.timeout_s = timeout_s

    def decide(self, now: float, batch: FormingBatch) -> Decision:
        if batch.passes_running:
            return Decision()
        deadline = batch.oldest_enqueued_at + self.timeout_s
        if now >= deadline:
            return Decision(SendReason.TIMEOUT)
        return Decision(wait_until=deadline)

    def describe(self) -> dict:
        return {"policy": self.name, "batch_timeout_ms": self.timeout_s * 1000}


class AdaptivePolicy:
    """Wait only while the expected latency saved by the instances about to arrive exceeds the wait's cost."""

    name = "adaptive"

    def __init__(self, observations: Observations, latency_slo_s: float | None, max_batch_size: int):
        self.observations = observations
        self.latency_slo_s = latency_slo_s or None
        self.max_batch_size = max_batch_size

    def latest_send(self, batch: FormingBatch) -> float:
        """When the batch must go: answered within the objective, or, without one, held at most one full pass.

        A full pass is what the worker measures, so the bound scales with the machine and the model;
        waiting longer than a pass for more could only lose to sending now and batching the rest next.
        The time a request spent behind a running pass does not count: the policy did not hold it.
        """
        cost_model = self.observations.cost_model
        if self.latency_slo_s is None:
            return batch.held_since + cost_model.full_pass_seconds()
        return batch.oldest_enqueued_at + self.latency_slo_s - cost_model.seconds(batch.instances)

    def decide(self, now: float, batch: FormingBatch) -> Decision:
        if batch.passes_running:
            # The pass running holds this batch anyway, and it grows meanwhile. Sent beside it, a
            # partial batch would share the same cores and finish no sooner (measured on CPU).
            return Decision()
        latest_send = self.latest_send(batch)
        if now >= latest_send:
            return Decision(SendReason.DEADLINE)
        if self.observations.arrivals.still_coming(now, latest_send - now) > 0:
            # Clients are on their way back: a wait that ran out says they are late, not that they are not coming.
            horizon_s = self.best_wait_in_closed_loop(now, batch, latest_send - now)
        elif batch.timed_out:
            return Decision(SendReason.TIMEOUT)
        else:
            horizon_s = self.best_wait(now, batch.instances, latest_send - now)
        if horizon_s is None:
            return Decision(SendReason.NOTHING_COMING)
        return Decision(wait_until=now + horizon_s)

    def best_wait_in_closed_loop(self, now: float, batch: FormingBatch, longest_s: float) -> float | None:
        """The wait after which the batch serves the most instances per second, or None if sending now does.

        The time counted is what the model spends on this batch: held since it became free,
        the wait, then the pass. Waiting pays while the clients still coming arrive faster than
        the batch would be served by sending now; they stop paying once only stragglers are out.
        """
        cost = self.observations.cost_model.seconds
        held_s = now - batch.held_since
        instances = batch.instances
        best_s, best_rate = None, instances / (held_s + cost(instances))
        full_pass_s = self.observations.cost_model.full_pass_seconds()
        for horizon_s in (fraction * full_pass_s for fraction in HORIZON_FRACTIONS):
            if horizon_s > longest_s:
                break
            joiners = min(self.max_batch_size - instances, self.observations.arrivals.still_coming(now, horizon_s))
            rate = (instances + joiners) / (held_s + horizon_s + cost(instances + math.ceil(joiners)))
            if rate > best_rate:
                best_s, best_rate = horizon_s, rate
        return best_s

    def best_wait(self, now: float, instances: int, longest_s: float) -> float | None:
        """The wait with the largest expected saving in total latency, or None if no wait saves any."""
        best_s, best_saving = None, 0.0
        full_pass_s = self.observations.cost_model.full_pass_seconds()
        for horizon_s in (fraction * full_pass_s for fraction in HORIZON_FRACTIONS):
            if horizon_s > longest_s:
                break
            expected = self.observations.arrivals.expected(now, horizon_s)
            saving = self._expected_saving(instances, horizon_s, expected)
            if saving > best_saving:
                best_s, best_saving = horizon_s, saving
        return best_s

    def _expected_saving(self, n: int, wait_s: float, expected_joiners: float) -> float:
        """Total latency saved by sending after `wait_s` rather than now, over a Poisson count of joiners.

        With k joiners arriving evenly within the wait: sent now, the n queued take c(n) and a
        joiner waits for that pass to end, then for a pass of its own, c(k); sent later, all
        n + k take the wait plus c(n + k) (a joiner only the rest of the wait).
        """
        if expected_joiners <= 0:
            return -n * wait_s
        cost = self.observations.cost_model.seconds
        c_n = cost(n)
        # A joiner arriving at a uniform time within the wait finds the pass sent now still running for:
        rest_of_pass = c_n - wait_s / 2 if wait_s <= c_n else c_n * c_n / (2 * wait_s)
        most = min(self.max_batch_size - n, math.ceil(expected_joiners + 4 * math.sqrt(expected_joiners) + 1))
        probability = math.exp(-expected_joiners)  # P(k = 0)
        total = probability * (-n * wait_s)
        for k in range(1, most + 1):
            probability *= expected_joiners / k
            c_all = cost(n + k)
            total += probability * (n * (c_n - wait_s - c_all) + k * (rest_of_pass + cost(k) - wait_s / 2 - c_all))
        return total

    def describe(self) -> dict:
        slo_ms = self.latency_slo_s * 1000 if self.latency_slo_s is not None else None
        return {"policy": self.name, "latency_slo_ms": slo_ms}
