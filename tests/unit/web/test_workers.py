"""The slow-client rules both workers share: deadlines, the 408 answer, connection and file limits."""

from __future__ import annotations

import importlib
import logging
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import orjson
import pytest
from gunicorn.config import Config

from scripts.launcher import PROJECT_ROOT
from service.backends.base import ModelLoadError
from service.settings import Settings
from service.web import workers
from service.web.workers import (
    MAX_OPEN_CONNECTIONS,
    RESERVED_FILES,
    STEP_ASIDE_EXIT_CODE,
    STEP_ASIDE_PAUSE_RATIO,
    UNLIMITED_FILES_TARGET,
    WORKER_CLASSES,
    ReadPolicy,
    load_app,
    open_connection_cap,
    raise_open_file_limit,
    reads_requests_whole,
)

READ_TIMEOUT_S = 10.0
KEEPALIVE_S = 5.0
HEAD = b"POST /predict HTTP/1.1\r\nContent-Length: 20\r\n\r\n"


@pytest.fixture
def policy() -> ReadPolicy:
    return ReadPolicy(read_timeout_s=READ_TIMEOUT_S, keepalive_s=KEEPALIVE_S, max_head_bytes=10_000, max_body_bytes=100)


def test_policy_from_gunicorn_and_settings():
    policy = ReadPolicy.for_worker(Config(), Settings(read_timeout_s=12.0, max_body_bytes=500))
    assert (policy.read_timeout_s, policy.keepalive_s, policy.max_body_bytes) == (12.0, 2, 500)
    assert policy.max_head_bytes == 100 * 8192 + 4 + 4094


def test_a_new_connection_may_stay_silent_for_the_longer_of_keepalive_and_the_read_timeout(policy):
    assert policy.new_request(now=100.0, kept_alive=False).deadline == 100.0 + READ_TIMEOUT_S
    short = ReadPolicy(read_timeout_s=2.0, keepalive_s=KEEPALIVE_S, max_head_bytes=10_000, max_body_bytes=100)
    assert short.new_request(now=100.0, kept_alive=False).deadline == 100.0 + KEEPALIVE_S


def test_a_kept_alive_connection_may_stay_silent_for_keepalive(policy):
    incoming = policy.new_request(now=100.0, kept_alive=True)
    assert incoming.stage == "idle" and not incoming.started
    assert incoming.deadline == 100.0 + KEEPALIVE_S


def test_the_head_must_arrive_within_the_read_timeout_of_its_first_byte_even_trickled(policy):
    incoming = policy.new_request(now=100.0, kept_alive=False)
    incoming.receive(b"P", now=103.0)
    assert incoming.stage == "head" and incoming.deadline == 103.0 + READ_TIMEOUT_S
    incoming.receive(b"OST /predict", now=112.0)  # progress does not move the head's deadline
    assert incoming.deadline == 103.0 + READ_TIMEOUT_S


def test_the_body_may_pause_at_most_the_read_timeout(policy):
    incoming = policy.new_request(now=100.0, kept_alive=False)
    incoming.receive(HEAD, now=101.0)
    assert incoming.stage == "body" and incoming.deadline == 101.0 + READ_TIMEOUT_S
    incoming.receive(b"0123456789", now=109.0)
    assert incoming.deadline == 109.0 + READ_TIMEOUT_S
    incoming.receive(b"0123456789", now=110.0)
    assert incoming.ready


def test_pipelined_bytes_start_the_head_clock_at_once(policy):
    incoming = policy.new_request(now=100.0, kept_alive=True, received=b"GET / HT")
    assert incoming.started and incoming.deadline == 100.0 + READ_TIMEOUT_S


def test_continue_is_asked_once_while_the_body_is_missing(policy):
    incoming = policy.new_request(now=100.0, kept_alive=False)
    incoming.receive(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", now=100.0)
    assert incoming.needs_continue
    incoming.continued()
    assert not incoming.needs_continue and incoming.continue_sent
    incoming.receive(b"abc", now=100.5)
    assert incoming.ready and incoming.take().endswith(b"abc")


@pytest.mark.parametrize("stage", ["head", "body"])
def test_the_timeout_answer_is_a_complete_408_that_closes(policy, stage):
    answer = policy.timeout_response(stage)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"Connection: close" in lines and b"Content-Type: application/json" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert "READ_TIMEOUT_S" in orjson.loads(body)["error"]


@pytest.mark.parametrize(
    ("open_files", "served", "expected"),
    [
        (20_000, 1000, MAX_OPEN_CONNECTIONS),
        (1024, 64, 1024 - RESERVED_FILES),
        (1024, 1000, 1000),  # never fewer than it serves: the open-file limit is the operator's to raise
        (resource.RLIM_INFINITY, 64, MAX_OPEN_CONNECTIONS),
    ],
)
def test_open_connection_cap(open_files, served, expected):
    assert open_connection_cap(open_files, served) == expected


class FakeLimits:
    def __init__(self, soft: int, hard: int, refuse: bool = False):
        self.limits, self.refuse, self.set_to = (soft, hard), refuse, None

    def getrlimit(self, which):
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        if self.refuse:
            raise ValueError("not allowed")
        self.set_to = limits


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [
        (1024, 524288, 524288),
        (1024, resource.RLIM_INFINITY, UNLIMITED_FILES_TARGET),
        (65536, 65536, 65536),
    ],
)
def test_the_soft_open_file_limit_is_raised_to_the_hard_one(monkeypatch, soft, hard, expected):
    limits = FakeLimits(soft, hard)
    monkeypatch.setattr(workers.resource, "getrlimit", limits.getrlimit)
    monkeypatch.setattr(workers.resource, "setrlimit", limits.setrlimit)
    assert raise_open_file_limit() == expected
    assert limits.set_to == (None if soft == expected else (expected, hard))


def test_a_refused_raise_keeps_the_soft_limit(monkeypatch):
    limits = FakeLimits(1024, 4096, refuse=True)
    monkeypatch.setattr(workers.resource, "getrlimit", limits.getrlimit)
    monkeypatch.setattr(workers.resource, "setrlimit", limits.setrlimit)
    assert raise_open_file_limit() == 1024


def test_requests_are_read_whole_unless_gunicorn_must_see_the_first_byte():
    assert reads_requests_whole(Config())
    plain = {"is_ssl": False, "proxy_protocol": "off", "http2_cleartext": "off"}
    for change in ({"is_ssl": True}, {"proxy_protocol": "v1"}, {"http2_cleartext": "prior-knowledge"}):
        assert not reads_requests_whole(SimpleNamespace(**{**plain, **change}))


@pytest.mark.parametrize("name", ["gevent", "gthread"])
def test_each_worker_class_setting_names_a_subclass_of_gunicorns_worker(name):
    module_name, class_name = WORKER_CLASSES[name].rsplit(".", 1)
    worker_class = getattr(importlib.import_module(module_name), class_name)
    base = {"gevent": "gunicorn.workers.ggevent.GeventWorker", "gthread": "gunicorn.workers.gthread.ThreadWorker"}
    assert f"{worker_class.__mro__[1].__module__}.{worker_class.__mro__[1].__name__}" == base[name]


def test_the_master_loads_the_worker_classes_without_metrics_numpy_or_tensorflow():
    """Gunicorn imports the worker class in the master: metrics there would give it metric files of its own."""
    loaded = "service.telemetry.metrics", "prometheus_client", "numpy", "tensorflow"
    imports = "import sys, service.web.gevent_worker, service.web.gthread_worker"
    code = f"{imports}; print([m for m in {loaded!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    assert done.stdout.strip() == "[]"


class BootingWorker:
    """A stand-in for a Gunicorn worker loading its app: its heartbeat counted, alive until told otherwise."""

    def __init__(self, others_serve: bool, failed_boots: int = 0):
        self.others_serve, self.failed_boots = others_serve, failed_boots
        self.alive, self.timeout, self.beats, self.failures_reported = True, 2, 0, 0
        self.tmp = SimpleNamespace(notify=self._beat)
        self.log = logging.getLogger("test.worker")

    def _beat(self):
        self.beats += 1

    def report_failure(self):
        self.failures_reported += 1


def failing_load(seconds: float):
    def load():
        time.sleep(seconds)
        raise ModelLoadError("no version loads")

    return load


def test_a_worker_that_cannot_load_while_others_serve_steps_aside_after_a_pause_with_its_heartbeat(caplog):
    worker = BootingWorker(others_serve=True)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        load_app(worker, failing_load(0.05))
    assert exited.value.code == STEP_ASIDE_EXIT_CODE != 3  # 3 would stop the master
    assert time.monotonic() - started >= 0.05 * (1 + STEP_ASIDE_PAUSE_RATIO) and worker.beats >= 1
    assert worker.failures_reported == 1  # the master knew at once
    assert "the other workers keep serving" in caplog.text and "no version loads" in caplog.text


def test_the_pause_doubles_with_each_failure_in_a_row_and_a_stop_ends_it():
    worker = BootingWorker(others_serve=True, failed_boots=3)
    worker.tmp = SimpleNamespace(notify=lambda: setattr(worker, "alive", False))  # SIGTERM during the pause
    started = time.monotonic()
    with pytest.raises(SystemExit):
        load_app(worker, failing_load(0.2))  # would pause 0.2 x 4 x 2**3 = 6.4 s
    assert time.monotonic() - started < 2


def test_a_worker_that_cannot_load_at_the_first_start_stops_the_service_with_its_error():
    with pytest.raises(ModelLoadError, match="no version loads"):
        load_app(BootingWorker(others_serve=False), failing_load(0))
