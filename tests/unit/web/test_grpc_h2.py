"""The gevent worker's gRPC transport, served in-process from this thread's gevent hub and called by grpcio's client
from a native thread (gevent's thread pool), so both run at once as in a worker."""

from __future__ import annotations

import dataclasses
import socket

import gevent
import gevent.event
import grpc
import pytest

from scripts.launcher import free_port
from service.web import http2
from service.web.grpc_h2 import H2GrpcServer
from service.web.grpc_health import LiveHealth
from service.web.grpc_server import Method

ECHO, ABORT, WAIT, STREAM, EVENTS, REMAINING = (
    f"/test.Svc/{name}" for name in ("Echo", "Abort", "Wait", "Stream", "Events", "Remaining")
)


@pytest.fixture
def released():
    """Set by a test to let the `Wait` calls answer."""
    return gevent.event.Event()


def table(released) -> dict[str, Method]:
    def echo(body, context):
        context.set_trailing_metadata((("x-echo", dict(context.invocation_metadata()).get("x-request-id", "")),))
        return body

    def abort(body, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the body is wrong: é")

    def wait(body, context):
        released.wait(30)
        return body

    def remaining(body, context):
        return repr(round(context.time_remaining())).encode()

    return {
        ECHO: Method("unary_unary", echo),
        ABORT: Method("unary_unary", abort),
        WAIT: Method("unary_unary", wait),
        REMAINING: Method("unary_unary", remaining),
        STREAM: Method("stream_stream", lambda requests, context: (body[::-1] for body in requests)),
        EVENTS: Method("unary_stream", lambda body, context: (body * n for n in range(1, 4))),
    }


@pytest.fixture
def serve(settings, released):
    """Start a server of `table` with settings changed as asked; returns its `target`. Stopped at the end."""
    servers = []

    def start(**changes) -> tuple[H2GrpcServer, str]:
        port = free_port()
        concurrency = changes.pop("concurrency", 8)
        changed = dataclasses.replace(settings, grpc_port=port, host="127.0.0.1", **changes)
        server = H2GrpcServer(table(released), LiveHealth(["test.Svc"], lambda: True), changed, concurrency)
        server.start()
        servers.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    released.set()
    for server in servers:
        server.stop(1)(5)


def in_thread(call):
    """Run a blocking client call in a native thread while this thread's hub serves."""
    return gevent.get_hub().threadpool.apply(call)


def channel_to(target: str) -> grpc.Channel:
    """A channel with its own connection: channels of one process share connections unless told otherwise."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def unary(target: str, method: str, body: bytes, **options):
    with channel_to(target) as channel:
        return channel.unary_unary(method).with_call(body, timeout=options.pop("timeout", 10), **options)


def failure(target: str, method: str, body: bytes, **options) -> grpc.RpcError:
    def call():
        try:
            unary(target, method, body, **options)
        except grpc.RpcError as error:
            return error
        raise AssertionError("the call succeeded")

    return in_thread(call)


def test_a_unary_call_gets_its_answer_and_trailing_metadata(serve):
    _, target = serve()
    answer, call = in_thread(lambda: unary(target, ECHO, b"hello", metadata=[("x-request-id", "r-1")]))
    assert answer == b"hello"
    assert dict(call.trailing_metadata())["x-echo"] == "r-1"
    assert call.code() == grpc.StatusCode.OK


def test_an_abort_is_the_calls_status_with_its_message_and_an_unknown_method_is_unimplemented(serve):
    _, target = serve()
    error = failure(target, ABORT, b"x")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "the body is wrong: é"
    assert failure(target, "/test.Svc/Other", b"x").code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_deadline_reaches_the_handler(serve):
    _, target = serve()
    answer, _ = in_thread(lambda: unary(target, REMAINING, b"", timeout=30))
    assert 25 <= float(answer) <= 30


def test_large_and_compressed_messages_flow_both_ways_and_too_large_ones_are_refused(serve):
    _, target = serve(max_body_bytes=3 << 20)
    body = bytes(range(256)) * 10240  # 2.5 MiB: many frames, past the default windows
    answer, _ = in_thread(lambda: unary(target, ECHO, body))
    assert answer == body
    answer, _ = in_thread(lambda: unary(target, ECHO, body, compression=grpc.Compression.Gzip))
    assert answer == body
    error = failure(target, ECHO, bytes(4 << 20))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    bomb = failure(target, ECHO, bytes(4 << 20), compression=grpc.Compression.Gzip)  # 4 KiB that inflate to 4 MiB
    assert bomb.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "inflates" in bomb.details()


def test_streams_answer_each_message_in_order(serve):
    _, target = serve()

    def calls():
        with channel_to(target) as channel:
            both = list(channel.stream_stream(STREAM)(iter([b"ab", b"cde", b""]), timeout=10))
            server = list(channel.unary_stream(EVENTS)(b"z", timeout=10))
            return both, server

    both, server = in_thread(calls)
    assert both == [b"ba", b"edc", b""]
    assert server == [b"z", b"zz", b"zzz"]


def test_calls_beyond_the_concurrency_are_refused_and_a_cancelled_one_frees_its_place(serve, released):
    _, target = serve(concurrency=1)
    with channel_to(target) as channel:
        waiting = channel.unary_unary(WAIT).future(b"w", timeout=30)
        gevent.sleep(0.2)  # the hub takes the first call
        assert failure(target, ECHO, b"x").code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        waiting.cancel()
        gevent.sleep(0.2)  # the hub reads the cancellation
        answer, _ = in_thread(lambda: unary(target, ECHO, b"after"))
        assert answer == b"after"


def test_a_drain_answers_the_calls_in_flight_and_refuses_new_connections(serve, released):
    server, target = serve()
    with channel_to(target) as channel:
        waiting = channel.unary_unary(WAIT).future(b"in flight", timeout=30)
        gevent.sleep(0.2)
        drained = server.stop(10)
        gevent.spawn_later(0.3, released.set)
        assert drained(10)
        assert waiting.result() == b"in flight"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(target.rpartition(":")[2])), timeout=1).close()


def test_a_client_that_does_not_speak_http2_is_closed_and_others_are_served(serve):
    _, target = serve()
    host, _, port = target.rpartition(":")

    def garbage():
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 64)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            return received

    received, kinds = in_thread(garbage), []
    while len(received) >= http2.FRAME_HEAD.size:  # the server's frames, up to its close
        length, kind, _, _ = http2.read_frame_head(received)
        kinds.append(kind)
        received = received[http2.FRAME_HEAD.size + length :]
    assert kinds == [http2.SETTINGS, http2.WINDOW_UPDATE, http2.GOAWAY]
    answer, _ = in_thread(lambda: unary(target, ECHO, b"still"))
    assert answer == b"still"


def test_a_connection_that_stalls_is_closed_once_its_age_is_reached(serve):
    _, target = serve(grpc_max_connection_age_s=0.2, graceful_timeout_s=1)
    host, _, port = target.rpartition(":")

    def stall():
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(http2.PREFACE[:10])  # and nothing more
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            return received

    assert http2.frame(http2.GOAWAY, 0, 0, http2.GOAWAY_PAYLOAD.pack(0, http2.NO_ERROR)) in in_thread(stall)
