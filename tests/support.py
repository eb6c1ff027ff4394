"""Helpers the tests share: polling with a deadline, a server's workers, clients that keep a server busy, its metrics
scraped, and the README's examples run."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

DEMO_SERVER_SETTINGS = {
    "WORKERS": "2",
    "MAX_BATCH_SIZE": "16",
    "BATCH_POLICY": "fixed",  # a long timeout, so the tests see batches form
    "BATCH_TIMEOUT_MS": "20",
    "MAX_BODY_BYTES": "100000",
    "MAX_REQUEST_INSTANCES": "200",
    "LOG_FORMAT": "json",
}

POLL_S = 0.05  # how often a condition is looked at: polling with a deadline, never a wait for something to happen


def wait_until(condition: Callable[[], object], timeout_s: float = 120.0, what: str = "the condition") -> object:
    """Poll `condition` until it returns something true, which is returned; the test fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outcome = condition()
        if outcome:
            return outcome
        time.sleep(POLL_S)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s")


def worker_pids(master_pid: int) -> set[int]:
    """The pids of a Gunicorn master's live workers."""
    return {child.pid for child in psutil.Process(master_pid).children() if child.status() != psutil.STATUS_ZOMBIE}


class ClientThreads:
    """`count` threads, each running `_run(its index)` until `_stop` is set. A context manager: they start on
    entry, and are stopped and joined on exit."""

    def __init__(self, count: int):
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(index,), daemon=True) for index in range(count)]

    def _run(self, index: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


class Clients(ClientThreads):
    """`count` clients posting `body` to `url` in a loop, counting each answer by status and by what `read` says of it.

    A connection error is counted as the status "error".
    """

    def __init__(self, url: str, body: dict, count: int = 4, read: Callable[[dict], object] = lambda answer: None):
        super().__init__(count)
        self._url, self._body, self._read = url, body, read
        self.statuses: Counter = Counter()
        self.answers: Counter = Counter()

    def _run(self, index: int) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    answer = session.post(self._url, json=self._body, timeout=60)
                except requests.ConnectionError:
                    self.statuses["error"] += 1
                    continue
                self.statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    self.answers[self._read(answer.json())] += 1

    def total(self) -> int:
        return sum(self.statuses.values())


def rows(count: int, start: float = 0.0) -> list[list[float]]:
    return [[start + i, start + i + 0.5, -(start + i)] for i in range(count)]


def infer_document(values: list[list[float]], **extra) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(values), 3], "data": values}], **extra}


def write_scaling_onnx(path: Path, factor: float) -> None:
    """A tiny ONNX model, y = factor * x over rows of 2 floats: versions that answer differently, loaded in ms."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "factor"], ["y"])],
        "scaling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[helper.make_tensor("factor", TensorProto.FLOAT, [], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, keyed by (name, labels)."""
    text = requests.get(url + "/metrics", timeout=30).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, metric: str, **labels) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def total(samples: dict, metric: str) -> float:
    return sum(v for (name, _), v in samples.items() if name == metric)


def wait_for_serving_workers(url: str, count: int, timeout_s: float = 120.0) -> dict:
    """Poll /metrics until `count` workers serve (/readyz answers as soon as one does); the last scrape."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape(url)
        if value(samples, "model_server_workers_alive") == count:
            return samples
        time.sleep(0.2)  # polling interval
    pytest.fail(f"{count} workers were not serving within {timeout_s:.0f} s")


def one_model(batcher, name: str = "m"):
    """A `batcher_for` (service/jobs/runner.py) of one model named `name`: its batcher, NotFound for any other."""
    from service.errors import NotFound

    def batcher_for(model: str):
        if model != name:
            raise NotFound(f"model {model!r} is not served here; this server serves {name!r}")
        return batcher

    return batcher_for


README = Path(__file__).resolve().parents[1] / "README.md"


def run_readme_block(marker: str, server, replacements: dict[str, str] | None = None) -> list[str]:
    """The README's shell or Python block marked `<!-- run by tests/integration/test_readme.py{marker} -->`,
    run on `server` (with `replacements` made in its text)."""
    pattern = rf"<!-- run by tests/integration/test_readme.py{re.escape(marker)} -->\n```(?P<language>sh|python)\n"
    block = re.search(pattern + r"(?P<script>.*?)```", README.read_text(), re.S)
    assert block, f"the README lost its example{marker}"
    script = block["script"].replace("localhost:8000", server.url.removeprefix("http://"))
    script = script.replace("localhost:8500", server.grpc_target)
    for old, new in (replacements or {}).items():
        script = script.replace(old, new)
    command = ["bash", "-c", script] if block["language"] == "sh" else [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()
