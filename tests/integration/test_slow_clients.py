"""Stalled clients hold only their connections: 2,000 of them do not delay a normal request.

Each test opens STALLED_CONNECTIONS raw sockets to a one-worker server (all of them on the
same worker, the hardest case for the defaults): half stop in the middle of the headers,
half send a complete head whose Content-Length promises more body than they send. Then a
normal predict request must be answered 200 quickly, and, with a short READ_TIMEOUT_S,
every stalled connection must be answered 408 and closed soon after the timeout.
"""

from __future__ import annotations

import http.client
import resource
import selectors
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.support import wait_until

pytestmark = pytest.mark.integration

STALLED_CONNECTIONS = 2_000
# The requirement: while the stalled connections are held, a normal request is answered
# within 1 s. Checked as stated: on this 2-core machine such requests take under 10 ms.
ANSWER_BOUND_S = 1.0
# The first request, sent right after the 2,000 connections opened, waits behind them in
# the accept queue: it measures how fast the worker takes them in (about 0.6 s under gevent
# here, 0.1 s under gthread). Twice the requirement, so a busy machine does not fail it.
BURST_ANSWER_BOUND_S = 2.0
NORMAL_REQUESTS = 5
SHORT_READ_TIMEOUT_S = 2
# Time allowed past READ_TIMEOUT_S for all 2,000 answers to arrive (polled, not slept).
CLOSE_MARGIN_S = 10.0
TRICKLING_CLIENTS = 5
TRICKLE_EVERY_S = 0.25  # a header byte this often: progress, but the head never ends in time

TCP_TABLE = Path("/proc/net/tcp")
IMAGE = [[[0.0]] * 8] * 8
PREDICT_BODY = orjson.dumps({"instances": [IMAGE]})
STALLED_HEAD = b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: test\r\nContent-Ty"
STALLED_BODY = (
    b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(PREDICT_BODY) + 100, PREDICT_BODY)  # a Content-Length that lies
)


@pytest.fixture(scope="module", autouse=True)
def enough_open_files():
    """The test holds 2,000 sockets (and the server as many): raise the soft open-file limit if needed."""
    needed = STALLED_CONNECTIONS + TRICKLING_CLIENTS + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open-file limit is {hard}; this test needs {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(params=["gevent", "gthread"])
def worker_class(request) -> str:
    return request.param


@pytest.fixture
def launch(start_server, demo_onnx_path, worker_class):
    """Start a one-worker server of the demo model (as ONNX: it boots in a second) with extra settings."""
    return lambda **settings: start_server(
        MODEL_PATH=str(demo_onnx_path), WORKER_CLASS=worker_class, WORKERS="1", **settings
    )


@dataclass
class StalledClient:
    kind: str  # "head", "body" or "trickle"
    sock: socket.socket
    sent_at: float  # when it sent its last byte (for a trickling client, its first)
    received: bytes = b""
    closed_at: float | None = None


def open_stalled_clients(port: int, count: int) -> list[StalledClient]:
    """Sockets that each send part of a request and then nothing: every other one mid-head, the rest mid-body."""
    clients = []
    for index in range(count):
        kind = "head" if index % 2 == 0 else "body"
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(STALLED_HEAD if kind == "head" else STALLED_BODY)
        clients.append(StalledClient(kind, sock, time.monotonic()))
    return clients


def still_open(clients: list[StalledClient]) -> int:
    """How many the server has neither answered nor closed."""
    open_count = 0
    for client in clients:
        try:
            client.sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except BlockingIOError:
            open_count += 1
    return open_count


def close_all(clients: list[StalledClient]) -> None:
    for client in clients:
        client.sock.close()


def timed_predict(port: int) -> tuple[int, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/v1/models/digits:predict", PREDICT_BODY, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        return answer.status, time.monotonic() - started
    finally:
        connection.close()


def server_has_read_everything(port: int) -> bool:
    """Whether, per /proc/net/tcp, no connection waits in the listener's accept queue and none has unread bytes.

    For a listening socket the receive-queue column is its accept backlog; for the server's
    side of a connection, the bytes it has not read yet.
    """
    for line in TCP_TABLE.read_text().splitlines()[1:]:
        fields = line.split()
        local_port, queued_bytes = int(fields[1].split(":")[1], 16), int(fields[4].split(":")[1], 16)
        if local_port == port and queued_bytes:
            return False
    return True


def seconds_until(condition, timeout_s: float, what: str) -> float:
    """How long `condition` took to hold (polled with a deadline)."""
    started = time.monotonic()
    wait_until(condition, timeout_s, what)
    return time.monotonic() - started


@pytest.mark.skipif(not TCP_TABLE.exists(), reason="needs Linux's /proc/net/tcp to see what the server has read")
def test_stalled_connections_do_not_delay_a_normal_request(launch, worker_class):
    server = launch()  # the defaults: READ_TIMEOUT_S, WORKER_CONNECTIONS, THREADS
    opened_at = time.monotonic()
    stalled = open_stalled_clients(server.port, STALLED_CONNECTIONS)
    opening_s = time.monotonic() - opened_at
    try:
        first_status, first_s = timed_predict(server.port)
        absorbed_s = seconds_until(lambda: server_has_read_everything(server.port), 30, "the server reading every byte")
        answers = [timed_predict(server.port) for _ in range(NORMAL_REQUESTS)]
        held = still_open(stalled)
    finally:
        close_all(stalled)
    times_ms = ", ".join(f"{seconds * 1000:.0f}" for _, seconds in answers)
    print(
        f"\n{worker_class}: {STALLED_CONNECTIONS} stalled connections opened in {opening_s:.2f} s; "
        f"a predict sent right after them answered in {first_s * 1000:.0f} ms; all read by the server "
        f"{absorbed_s:.2f} s later; then predicts answered in {times_ms} ms; {held} stalled connections still held"
    )
    assert first_status == 200 and first_s < BURST_ANSWER_BOUND_S
    assert [status for status, _ in answers] == [200] * NORMAL_REQUESTS
    assert max(seconds for _, seconds in answers) < ANSWER_BOUND_S
    assert held == STALLED_CONNECTIONS, "the server closed stalled connections before READ_TIMEOUT_S"


def read_until_closed(clients: list[StalledClient], deadline: float, trickle: dict[socket.socket, bytes]) -> None:
    """Poll every socket until the server closes it, recording what it sent and when it closed.

    Meanwhile the sockets in `trickle` send their next byte every TRICKLE_EVERY_S.
    """
    selector = selectors.DefaultSelector()
    for client in clients:
        client.sock.setblocking(False)
        selector.register(client.sock, selectors.EVENT_READ, client)
    open_count = len(clients)
    next_trickle = time.monotonic()
    while open_count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.05):
            client = key.data
            try:
                data = client.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            client.received += data
            if not data:
                client.closed_at = time.monotonic()
                selector.unregister(client.sock)
                open_count -= 1
        if time.monotonic() >= next_trickle:
            next_trickle += TRICKLE_EVERY_S
            for client in clients:
                if client.sock in trickle and trickle[client.sock] and client.closed_at is None:
                    try:
                        client.sock.send(trickle[client.sock][:1])
                        trickle[client.sock] = trickle[client.sock][1:]
                    except OSError:
                        trickle[client.sock] = b""
    selector.close()


def test_stalled_connections_are_answered_408_and_closed_after_the_read_timeout(launch, worker_class):
    server = launch(READ_TIMEOUT_S=str(SHORT_READ_TIMEOUT_S))
    clients = open_stalled_clients(server.port, STALLED_CONNECTIONS)
    trickle = {}
    for _ in range(TRICKLING_CLIENTS):  # the head never ends: every header line is followed by another
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(STALLED_HEAD[:1])
        clients.append(StalledClient("trickle", sock, time.monotonic()))
        trickle[sock] = STALLED_HEAD[1:] + b"pe: application/json\r\nX-More: 1\r\n" * 20
    try:
        read_until_closed(clients, time.monotonic() + SHORT_READ_TIMEOUT_S + CLOSE_MARGIN_S, trickle)
    finally:
        close_all(clients)
    unclosed = [client for client in clients if client.closed_at is None]
    assert not unclosed, f"{len(unclosed)} stalled connections still open {CLOSE_MARGIN_S} s after READ_TIMEOUT_S"
    for kind in ("head", "body", "trickle"):
        delays_s = sorted(client.closed_at - client.sent_at for client in clients if client.kind == kind)
        print(
            f"\n{worker_class}: READ_TIMEOUT_S={SHORT_READ_TIMEOUT_S}: {len(delays_s)} {kind} connections closed "
            f"{delays_s[0]:.2f} to {delays_s[-1]:.2f} s after they stalled",
            end="",
        )
        assert delays_s[0] > SHORT_READ_TIMEOUT_S - 0.1, f"{kind}: closed before READ_TIMEOUT_S"
    for client in clients:
        head, _, body = client.received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), f"{client.kind}: {client.received[:200]!r}"
        assert b"\r\nConnection: close" in head
        assert "READ_TIMEOUT_S" in orjson.loads(body)["error"]
