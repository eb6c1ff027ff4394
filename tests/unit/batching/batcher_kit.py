"""What the batching tests drive a batcher with: a predict gated by events and a clock the test moves."""

from __future__ import annotations

import threading

import numpy as np

ANSWER_TIMEOUT_S = 10


class GatedPredict:
    """predict(payloads) -> [p * 10]; blocks while `gate` is clear and signals each batch it starts."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.batches: list[list] = []

    def __call__(self, payloads):
        self.batches.append(list(payloads))
        self.started.release()
        assert self.gate.wait(ANSWER_TIMEOUT_S)
        return [payload * 10 for payload in payloads]

    def hold(self):
        self.gate.clear()

    def wait_for_batch(self):
        assert self.started.acquire(timeout=ANSWER_TIMEOUT_S), "no batch started"


class ManualClock:
    """A clock the test moves; the batcher reads deadlines from it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class ArrayPredict:
    """y = 2x over payloads of arrays keyed by input name; records each pass's instances and can be held."""

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


def column(values) -> dict[str, np.ndarray]:
    """One input `x` holding the instance [v, -v] for each value."""
    return {"x": np.array([[v, -v] for v in values], dtype=np.float32)}
