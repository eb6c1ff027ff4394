"""Backpressure: connections wait unread while the queue is full, woken first parked first; refusals skip parsing."""

from __future__ import annotations

import dataclasses
import json
import time

from prometheus_client import REGISTRY

from service.batching.admission import DeadlineUnreachable
from service.web.backpressure import EarlyRefusal, ParkingLot, backpressure_for, model_server_of
from service.web.framing import RequestFraming
from service.web.workers import IncomingRequest


class FakeBatcher:
    def __init__(self, max_queue: int, queue_depth: int = 0):
        self.max_queue = max_queue
        self.queue_depth = queue_depth
        self.accepted_requests = 0
        self.listeners = []

    @property
    def admits(self) -> int:
        return self.max_queue - self.queue_depth

    def accept(self, count: int) -> None:
        self.queue_depth += count
        self.accepted_requests += count

    def full_pass_seconds(self) -> float:
        return 1.0

    def add_room_listener(self, listener):
        self.listeners.append(listener)


def parked_gauge() -> float:
    return REGISTRY.get_sample_value("model_server_parked_connections") or 0.0


def test_a_connection_waits_only_while_the_queue_is_full_or_others_wait_before_it():
    batcher = FakeBatcher(max_queue=4, queue_depth=3)
    lot = ParkingLot(batcher)
    assert not lot.must_wait()
    batcher.queue_depth = 4
    assert lot.must_wait()
    lot.park("a", now=0.0)
    batcher.queue_depth = 0
    assert lot.must_wait(), "a connection does not overtake one parked before it"
    assert lot.wakeable(now=0.0) == ["a"]
    assert not lot.must_wait()


def test_the_oldest_are_woken_as_many_as_the_queue_has_room_for_and_room_is_promised_once():
    batcher = FakeBatcher(max_queue=4, queue_depth=4)
    lot = ParkingLot(batcher)
    gauge_before = parked_gauge()
    for name in "abcdefgh":
        lot.park(name, now=float(ord(name)))
    assert parked_gauge() == gauge_before + 8
    assert lot.wakeable(now=200.0) == []
    assert lot.next_wake_at() is None, "nothing promised: only room made wakes anyone"
    batcher.queue_depth = 2  # a batch of 2 left
    assert lot.wakeable(now=200.0) == ["a", "b"]
    assert lot.wakeable(now=200.1) == [], "room promised to woken connections not yet read is not promised twice"
    assert lot.next_wake_at() == 201.0, "if they never take it, the others are woken a full pass later"
    batcher.accept(1)  # "a"'s request
    batcher.queue_depth -= 2  # another batch left
    assert lot.wakeable(now=200.2) == ["c", "d"], "the room left after what is promised to b"
    batcher.accept(1)  # "b"'s request; c and d never send one: their promise lapses after a full pass
    batcher.queue_depth = 0
    assert lot.wakeable(now=200.3) == ["e", "f"]
    assert lot.wakeable(now=202.0) == ["g", "h"]
    assert len(lot) == 0 and parked_gauge() == gauge_before
    assert lot.next_wake_at() is None, "nobody left to wake"


def test_one_woken_too_many_waits_again_first_in_line():
    batcher = FakeBatcher(max_queue=4, queue_depth=3)
    lot = ParkingLot(batcher)
    for name in "abc":
        lot.park(name, now=float(ord(name)))
    assert lot.wakeable(now=200.0) == ["a"]
    assert not lot.queue_full()
    batcher.accept(1)  # a new connection's request took the room before "a" was read
    assert lot.queue_full()
    lot.park("a", now=200.0, first=True)
    batcher.queue_depth = 3
    assert lot.wakeable(now=200.1) == ["a"]
    assert lot.overdue(now=ord("b") + 10.0, patience_s=10.0) == ["b"], "first in line never hides the overdue"


def test_a_connection_parked_too_long_is_read_anyway_and_one_that_leaves_is_forgotten():
    batcher = FakeBatcher(max_queue=1, queue_depth=1)
    lot = ParkingLot(batcher)
    lot.park("a", now=0.0)
    lot.park("b", now=1.0)
    lot.park("c", now=2.0)
    assert lot.next_overdue_at(patience_s=5.0) == 5.0
    assert lot.overdue(now=4.9, patience_s=5.0) == []
    assert lot.overdue(now=6.0, patience_s=5.0) == ["a", "b"]
    lot.leave("c")
    assert len(lot) == 0 and lot.next_overdue_at(5.0) is None
    lot.park("d", now=7.0)
    assert lot.everyone() == ["d"]


def test_a_worker_gets_backpressure_only_for_a_model_server_and_is_told_when_room_is_made(app):
    called = []
    lot, early = backpressure_for(app, lambda: called.append(True))
    assert isinstance(lot, ParkingLot) and isinstance(early, EarlyRefusal)
    assert app.test_client().post("/predict", json={"instances": [[1.0, 2.0, 3.0]]}).status_code == 200
    assert called, "a batch leaving the queue wakes the worker's parked connections"
    assert model_server_of(object()) is None, "an app without a model server has no queue to wait for"
    assert backpressure_for(object(), lambda: None) == (None, None)


def test_with_several_models_connections_are_not_parked_and_a_full_queue_refuses_only_its_models(many_models_app):
    lot, early = backpressure_for(many_models_app, lambda: None)
    assert lot is None, "which model a parked connection's next request is for is unknown until it is read"
    batcher = many_models_app.extensions["model_server"].models["double"].batcher
    batcher._queued_instances, batcher._admits = batcher.max_queue, 0  # as if double's queue were full
    try:
        refused = early.answer(refused_request(b"/v1/models/double:predict"))
        assert refused is not None and parse_answer(refused[0])[0] == 503
        assert early.answer(refused_request(b"/v1/models/triple:predict")) is None, "triple's queue has room"
    finally:
        batcher._queued_instances, batcher._admits = 0, batcher.max_queue


NEXT_REQUEST = b"GET /healthz HTTP/1.1\r\n\r\n"


def refused_request(path: bytes = b"/predict", method: bytes = b"POST", fields: bytes = b"") -> IncomingRequest:
    """A request received whole, with the start of a pipelined next one behind it."""
    body = b'{"instances": [[1.0, 2.0, 3.0]]}'
    head = b"%s %s HTTP/1.1\r\nX-Request-ID: client-7\r\n%sContent-Length: %d\r\n\r\n" % (
        method,
        path,
        fields,
        len(body),
    )
    return IncomingRequest(RequestFraming(8192, 4096, head + body + NEXT_REQUEST), 30.0, 30.0, time.monotonic())


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body)
    return int(status_line.split()[1]), headers, json.loads(body)


def test_a_full_queue_refuses_a_predict_request_unparsed_with_the_routes_own_answer(app):
    server = app.extensions["model_server"]
    early = EarlyRefusal(server)
    assert early.answer(refused_request()) is None, "the queue has room"
    counted = (
        REGISTRY.get_sample_value(
            "model_server_http_requests_total",
            {"protocol": "tfserving_rest", "route": "/v1/models/{name}:predict", "method": "POST", "status": "503"},
        )
        or 0
    )
    server.sole.batcher._queued_instances = server.sole.batcher.max_queue  # as if the queue were full
    server.sole.batcher._admits = 0
    try:
        raw, rest = early.answer(
            refused_request(b"/v1/models/%s:predict" % server.sole.versions.latest().name.encode())
        )
        unknown_model = early.answer(refused_request(b"/v1/models/other:predict"))
        not_predict = early.answer(refused_request(b"/v1/models/m/metadata", b"GET"))
        settings, server.settings = server.settings, dataclasses.replace(server.settings, api_keys="secret")
        keys_first = early.answer(refused_request())  # 401 comes before 503
        server.settings = settings
    finally:
        server.sole.batcher._queued_instances = 0
        server.sole.batcher._admits = server.sole.batcher.max_queue
    status, headers, body = parse_answer(raw)
    assert status == 503 and "queue is full" in body["error"] and int(headers["Retry-After"]) >= 1
    assert headers["X-Request-ID"] == "client-7" and headers["Content-Type"] == "application/json"
    assert rest == NEXT_REQUEST, "a pipelined request after the refused one is kept for the parser"
    assert (
        REGISTRY.get_sample_value(
            "model_server_http_requests_total",
            {"protocol": "tfserving_rest", "route": "/v1/models/{name}:predict", "method": "POST", "status": "503"},
        )
        == counted + 1
    )
    assert unknown_model is None and not_predict is None, "what the full queue does not refuse is served as usual"
    assert keys_first is None, "with API keys, a request is authenticated before it is refused"


def test_a_deadline_that_cannot_be_met_refuses_unparsed_by_the_servers_timeout_or_the_clients(app, monkeypatch):
    server = app.extensions["model_server"]
    budgets = []

    def check_room(size=1, budget_s=None):
        budgets.append(budget_s)
        if budget_s is not None and budget_s < 1.0:
            raise DeadlineUnreachable("an answer would take about 1000 ms", 1.5)

    monkeypatch.setattr(server.sole.batcher, "check_room", check_room)
    monkeypatch.setattr(server.sole.batcher, "_admits", 0)  # as if the default budget admitted nothing more
    monkeypatch.setattr(server.sole, "settings", dataclasses.replace(server.sole.settings, request_timeout_ms=500))
    early = EarlyRefusal(server)
    raw, rest = early.answer(refused_request())
    status, headers, body = parse_answer(raw)
    assert status == 503 and "deadline cannot be met" in body["error"] and headers["Retry-After"] == "2"
    assert rest == NEXT_REQUEST
    assert early.answer(refused_request(fields=b"X-Request-Timeout-Ms: 250\r\n")) is not None
    assert early.answer(refused_request(fields=b"X-Request-Timeout-Ms: 5000\r\n")) is not None, (
        "REQUEST_TIMEOUT_MS caps the client's deadline"
    )
    monkeypatch.setattr(server.sole, "settings", dataclasses.replace(server.sole.settings, request_timeout_ms=0))
    assert early.answer(refused_request(fields=b"X-Request-Timeout-Ms: 5000\r\n")) is None, "5 s can be met"
    assert early.answer(refused_request(fields=b"X-Request-Timeout-Ms: soon\r\n")) is None, "the route says 400"
    assert budgets == [0.5, 0.25, 0.5, 5.0]
