"""The gevent worker's gRPC server: HTTP/2 on the worker's own hub, a greenlet per connection and per call.

Why not grpcio here: under gevent, grpcio polls its completion queue through gevent's thread pool,
one hand-off between OS threads per event, and its calls reached the batcher one by one. On the
demo model at 32 clients that ran 0.18x REST's req/s at 6x its CPU per call (BENCHMARKS.md,
"Protocols"). Here a call is served as an HTTP request is in this worker: its bytes are read by a
greenlet, and its handler (the same method table as grpcio's, service/web/grpc_server.py) runs in
a greenlet of its own, so calls join batches as they arrive. HTTP/2's frames and HPACK are
service/web/http2.py's; a call's messages, deadline and context are service/web/grpc_streams.py's.

What it does of gRPC over HTTP/2: unary, server-streaming and bidirectional calls; the deadline
(`grpc-timeout`) and metadata; identity, gzip and deflate messages in (answers are identity);
trailers with `grpc-status`, `grpc-message` and the call's trailing metadata; flow control both
ways; at most `concurrency` calls at once (more are RESOURCE_EXHAUSTED, as grpcio's
`maximum_concurrent_rpcs`), each message at most MAX_BODY_BYTES (RESOURCE_EXHAUSTED);
GRPC_MAX_CONNECTION_AGE_S and the drain as GOAWAY, then the calls in flight finish. No TLS: as
grpcio's port here, it is plaintext (h2c with prior knowledge, what gRPC clients send).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import gevent
import gevent.event
import gevent.lock
import gevent.server
import gevent.socket

from service.settings import Settings
from service.web.grpc_server import Method
from service.web.grpc_streams import PREFIX, STATUS, CallAborted, CallContext, CallStream, deadline_of, messages_of
from service.web.http2 import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FRAME_HEAD,
    FRAME_SIZE_ERROR,
    GOAWAY,
    GOAWAY_PAYLOAD,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTING,
    SETTINGS,
    WINDOW,
    WINDOW_UPDATE,
    HeaderDecoder,
    ProtocolViolation,
    frame_head,
    literal_field,
    read_frame_head,
    unpadded,
)

log = logging.getLogger(__name__)

READ_BYTES = 1 << 16
RESERVED_HEADERS = frozenset({b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"})
MAX_DETAILS = 4096  # characters of an error's message sent in grpc-message

RECEIVE_MAX_FRAME = DEFAULT_MAX_FRAME  # we take the protocol's default frame size
RECEIVE_WINDOW = 1 << 22  # per stream and connection: a message of MAX_BODY_BYTES arrives without waiting on us
MAX_HEADER_LIST_BYTES = 1 << 16
# The answers' header fields, encoded once: `:status: 200` (static table entry 8), then content-type's value
# after its static name (entry 31); each status's `grpc-status`.
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + bytes([len(b"application/grpc")]) + b"application/grpc"
MESSAGE_SAFE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"  # grpc-message: percent-encode the rest (gRPC's spec)


class _Connection:
    """One client connection: its greenlet reads and parses frames, each call's greenlet answers it.

    HTTP/2 as gRPC uses it (RFC 9113): the frames are parsed here, the request headers decoded by
    `hpack` (HPACK's dynamic table and Huffman codes), and the answers' headers written as HPACK
    literals that need no table. What gRPC clients never send (server push, priorities, upgrades
    from HTTP/1.1) is refused or ignored.
    """

    def __init__(self, server: H2GrpcServer, sock: socket.socket, address: tuple):
        self._server = server
        self._socket = sock
        self._peer = f"ipv4:{address[0]}:{address[1]}" if len(address) == 2 else f"ipv6:[{address[0]}]:{address[1]}"
        self._decoder = HeaderDecoder(MAX_HEADER_LIST_BYTES)
        self._streams: dict[int, CallStream] = {}
        self._send_windows: dict[int, int] = {}  # per stream: bytes we may still send
        self._connection_window = DEFAULT_WINDOW
        self._initial_window = DEFAULT_WINDOW  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self._max_frame = DEFAULT_MAX_FRAME  # the client's SETTINGS_MAX_FRAME_SIZE
        self._unacknowledged = 0  # bytes received since our last connection WINDOW_UPDATE
        self._highest_stream = 0
        self._headers: tuple[int, int, bytearray] | None = None  # (stream, flags, block) until END_HEADERS
        self._pending: list[bytes] = []  # frames to write at the next `_flush`
        self._writing = gevent.lock.Semaphore()
        self._window_opened = gevent.event.Event()
        self._waiting_for_window = 0  # calls whose answer waits for the client's flow-control windows
        self._going_away = False
        self._closed = False

    def serve(self) -> None:
        settings = self._server.settings
        self._frame(SETTINGS, 0, 0, SETTING.pack(MAX_CONCURRENT_STREAMS, self._server.concurrency)
                    + SETTING.pack(INITIAL_WINDOW_SIZE, RECEIVE_WINDOW)
                    + SETTING.pack(MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_BYTES))  # fmt: skip
        self._frame(WINDOW_UPDATE, 0, 0, WINDOW.pack(RECEIVE_WINDOW - DEFAULT_WINDOW))
        self._flush()
        age_s = settings.grpc_max_connection_age_s
        age = gevent.spawn_later(age_s, self.go_away) if age_s else None
        try:
            self._read_frames()
        except ProtocolViolation as error:
            log.info("gRPC connection from %s closed: %s", self._peer, error)
            self._frame(GOAWAY, 0, 0, GOAWAY_PAYLOAD.pack(self._highest_stream, error.code))
            self._flush()
        except OSError:
            pass
        finally:
            if age is not None:
                age.kill(block=False)
            self._closed = True
            self._window_opened.set()
            for stream_id, stream in list(self._streams.items()):
                self._cancel(stream)
                if not stream.started:  # no call of its own to count it out
                    del self._streams[stream_id]
                    self._server.call_ended()
            self._socket.close()

    def go_away(self) -> None:
        """Tell the client to open no more calls here (GOAWAY); close once the calls in flight are answered, or
        after GRACEFUL_TIMEOUT_S (so a connection lasts at most GRPC_MAX_CONNECTION_AGE_S and that, however
        it stalls)."""
        if self._going_away or self._closed:
            return
        self._going_away = True
        self._frame(GOAWAY, 0, 0, GOAWAY_PAYLOAD.pack(self._highest_stream, NO_ERROR))
        self._flush()
        self._close_if_done()
        if not self._closed:
            gevent.spawn_later(self._server.settings.graceful_timeout_s, self.close_now)

    def close_now(self) -> None:
        """Close at once: the drain's grace is over."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)

    def _read_frames(self) -> None:
        """Read the preface, then frames until the client closes; each read's frames are handled in place, and
        what they asked is written in one go."""
        pending = b""
        while len(pending) < len(PREFACE):
            data = self._socket.recv(READ_BYTES)
            if not data:
                return
            pending += data
        if pending[: len(PREFACE)] != PREFACE:
            raise ProtocolViolation(PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC speaks h2c)")
        pending = pending[len(PREFACE) :]
        while not self._closed:
            at, end = 0, len(pending)
            while end - at >= FRAME_HEAD.size:
                length, kind, flags, stream_id = read_frame_head(pending, at)
                if length > RECEIVE_MAX_FRAME:
                    raise ProtocolViolation(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if end - at < FRAME_HEAD.size + length:
                    break
                start = at + FRAME_HEAD.size
                self._handle(kind, flags, stream_id, pending[start : start + length])
                at = start + length
            self._flush()
            data = self._socket.recv(READ_BYTES)
            if not data:
                return
            pending = pending[at:] + data if at < end else data

    def _handle(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._headers is not None and kind != CONTINUATION:
            raise ProtocolViolation(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            if stream_id % 2 == 0 or (stream_id <= self._highest_stream and stream_id not in self._streams):
                raise ProtocolViolation(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
            block = unpadded(flags, payload)
            if flags & PRIORITY_FLAG:
                block = block[5:]
            self._headers = (stream_id, flags, bytearray(block))
            if flags & END_HEADERS:
                self._end_headers()
        elif kind == CONTINUATION:
            if self._headers is None or self._headers[0] != stream_id:
                raise ProtocolViolation(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
            self._headers[2].extend(payload)
            if len(self._headers[2]) > MAX_HEADER_LIST_BYTES:
                raise ProtocolViolation(ENHANCE_YOUR_CALM, "a header block over 64 KiB")
            if flags & END_HEADERS:
                self._end_headers()
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
                self._frame(SETTINGS, ACK, 0, b"")
        elif kind == WINDOW_UPDATE:
            (increment,) = WINDOW.unpack(payload[:4])
            if stream_id == 0:
                self._connection_window += increment & 0x7FFFFFFF
            elif stream_id in self._send_windows:
                self._send_windows[stream_id] += increment & 0x7FFFFFFF
            if self._waiting_for_window:
                self._window_opened.set()
        elif kind == PING:
            if not flags & ACK:
                self._frame(PING, ACK, 0, payload)
        elif kind == RST_STREAM:
            stream = self._streams.pop(stream_id, None)
            self._send_windows.pop(stream_id, None)
            if stream is not None:
                self._cancel(stream)
                self._server.call_ended()
        elif kind == GOAWAY:
            self._going_away = True
            self._close_if_done()
        elif kind == PUSH_PROMISE:
            raise ProtocolViolation(PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frames are ignored, as RFC 9113 asks

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._unacknowledged += len(payload)
        if self._unacknowledged >= RECEIVE_WINDOW // 2:
            self._frame(WINDOW_UPDATE, 0, 0, WINDOW.pack(self._unacknowledged))
            self._unacknowledged = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # reset by us or by the client: its bytes are counted above, and dropped
        stream.received_bytes += len(payload)
        if not flags & END_STREAM and stream.received_bytes >= RECEIVE_WINDOW // 2:
            self._frame(WINDOW_UPDATE, 0, stream_id, WINDOW.pack(stream.received_bytes))
            stream.received_bytes = 0
        stream.receive(unpadded(flags, payload))
        if flags & END_STREAM:
            self._end_stream(stream_id, stream)
        elif stream.error is not None and not stream.started:  # refuse now, not once the client has sent it all
            self._start(stream_id, stream)

    def _end_headers(self) -> None:
        stream_id, flags, block = self._headers
        self._headers = None
        headers = self._decoder.decode(bytes(block))
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers of a request: gRPC sends none; the end of its stream, if flagged
            if flags & END_STREAM:
                self._end_stream(stream_id, stream)
            return
        self._highest_stream = stream_id
        self._begin(stream_id, headers, bool(flags & END_STREAM))

    def _settings(self, payload: bytes) -> None:
        if len(payload) % SETTING.size:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "a SETTINGS frame of a partial setting")
        for at in range(0, len(payload), SETTING.size):
            code, value = SETTING.unpack_from(payload, at)
            if code == INITIAL_WINDOW_SIZE:
                for stream_id in self._send_windows:
                    self._send_windows[stream_id] += value - self._initial_window
                self._initial_window = value
                self._window_opened.set()
            elif code == MAX_FRAME_SIZE:
                self._max_frame = value

    def _begin(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        fields = dict(headers)
        path = fields.get(b":path", b"").decode("latin-1")
        method = self._server.table.get(path)
        if self._going_away:
            self._refuse(stream_id, "UNAVAILABLE", "the worker is shutting down; call again on a new connection")
            return
        if method is None:
            self._refuse(stream_id, "UNIMPLEMENTED", f"method {path!r} is not served here")
            return
        if not fields.get(b"content-type", b"").startswith(b"application/grpc"):
            self._refuse(stream_id, "INTERNAL", "content-type must be application/grpc")
            return
        if not self._server.call_started():
            self._refuse(stream_id, "RESOURCE_EXHAUSTED", "too many calls at once in this worker; retry shortly")
            return
        metadata = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in headers
            if not name.startswith(b":") and name not in RESERVED_HEADERS
        ]
        context = CallContext(self._peer, metadata, deadline_of(fields.get(b"grpc-timeout")))
        stream = CallStream(
            method, context, fields.get(b"grpc-encoding", b"identity"), self._server.settings.max_body_bytes
        )
        self._streams[stream_id] = stream
        self._send_windows[stream_id] = self._initial_window
        if stream.messages is not None:
            self._start(stream_id, stream)
        if ended:
            self._end_stream(stream_id, stream)

    def _end_stream(self, stream_id: int, stream: CallStream) -> None:
        stream.finish()
        if not stream.started:
            self._start(stream_id, stream)

    def _start(self, stream_id: int, stream: CallStream) -> None:
        stream.started = True
        gevent.spawn(self._call, stream_id, stream)

    def _call(self, stream_id: int, stream: CallStream) -> None:
        """Run the handler of one call and answer it: its messages, then its status."""
        context, method = stream.context, stream.method
        code, details, sent_headers = 0, "", False
        try:
            if method.kind == "stream_stream":
                answers = method.handler(messages_of(stream), context)
            else:
                if stream.error is None and len(stream.received) != 1:
                    stream.error = CallAborted(STATUS["INTERNAL"], "a unary call takes exactly one message")
                if stream.error is not None:
                    raise stream.error
                answer = method.handler(stream.received[0], context)
                answers = [answer] if method.kind == "unary_unary" else answer
            for body in answers:
                if stream.closed or context.code:  # set_code without abort (grpc.health's NOT_FOUND): that status
                    break
                if not sent_headers:
                    self._frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS)
                    sent_headers = True
                self._send_message(stream_id, body)
                if method.kind != "unary_unary":  # a stream's answers go as they come; a unary's with its status
                    self._flush()
            if stream.error is not None:
                raise stream.error
            code = context.code
        except CallAborted as aborted:
            code, details = aborted.code, aborted.details
        except Exception as error:  # a handler's fault is INTERNAL for this call; the connection goes on
            log.exception("gRPC call %s failed", stream_id)
            code, details = STATUS["INTERNAL"], f"the server failed: {type(error).__name__}"
        finally:
            ended = self._streams.pop(stream_id, None) is not None
            self._send_windows.pop(stream_id, None)
            if ended:
                self._server.call_ended()
            context.end()
        if ended and not self._closed:
            self._send_status(stream_id, code, details, context.trailing, sent_headers)
            self._flush()  # one write for the answer's headers, message and status
        self._close_if_done()

    def _send_status(self, stream_id: int, code: int, details: str, trailing: tuple, sent_headers: bool) -> None:
        block = bytearray() if sent_headers else bytearray(RESPONSE_HEADERS)
        block += STATUS_FIELDS.get(code) or literal_field(b"grpc-status", str(code).encode())
        if details:
            block += literal_field(b"grpc-message", quote(details[:MAX_DETAILS], safe=MESSAGE_SAFE).encode())
        for name, value in trailing:
            block += literal_field(name.encode("latin-1"), str(value).encode("latin-1"))
        self._frame(HEADERS, END_HEADERS | END_STREAM, stream_id, bytes(block))

    def _refuse(self, stream_id: int, status: str, details: str) -> None:
        """A trailers-only answer, before any handler runs (sent with the reading loop's next write)."""
        self._send_status(stream_id, STATUS[status], details, (), sent_headers=False)

    def _send_message(self, stream_id: int, body: bytes) -> None:
        """One message, in frames as the client's flow-control windows allow (waiting for them to open)."""
        data = PREFIX.pack(0, len(body)) + body
        window = self._send_windows.get(stream_id, 0)
        if len(data) <= min(window, self._connection_window, self._max_frame):  # most answers: one frame at once
            self._frame(DATA, 0, stream_id, data)
            self._send_windows[stream_id] = window - len(data)
            self._connection_window -= len(data)
            return
        rest = memoryview(data)
        while rest:
            if self._closed or stream_id not in self._send_windows:
                return
            size = min(self._send_windows[stream_id], self._connection_window, self._max_frame, len(rest))
            if size <= 0:
                self._flush()
                self._window_opened.clear()
                self._waiting_for_window += 1
                try:
                    self._window_opened.wait()
                finally:
                    self._waiting_for_window -= 1
                continue
            self._frame(DATA, 0, stream_id, rest[:size].tobytes())
            self._send_windows[stream_id] -= size
            self._connection_window -= size
            rest = rest[size:]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        """Queue a frame for the next `_flush`."""
        self._pending += (frame_head(kind, flags, stream_id, len(payload)), payload)  # not joined: it may be large

    def _flush(self) -> None:
        """Write the frames queued; one writer at a time, so the bytes of two calls never interleave."""
        if not self._pending:
            return
        with self._writing:
            if self._pending:
                pending, self._pending = b"".join(self._pending), []
                try:
                    self._socket.sendall(pending)
                except OSError:
                    self._closed = True

    def _cancel(self, stream: CallStream) -> None:
        stream.closed = True
        stream.finish()
        stream.context.end()

    def _close_if_done(self) -> None:
        if self._going_away and not self._streams and not self._closed:
            self._flush()
            self.close_now()


STATUS_FIELDS = {code: literal_field(b"grpc-status", str(code).encode()) for code in STATUS.values()}


class H2GrpcServer:
    """Serves `table` on GRPC_PORT from the gevent worker's hub: `start()` binds, `stop()` drains.

    Every worker binds the port with SO_REUSEPORT, as grpcio's server does, so the kernel spreads
    connections over the workers.
    """

    def __init__(self, table: dict[str, Method], health: Any, settings: Settings, concurrency: int):
        self.table = table
        self.settings = settings
        self.concurrency = concurrency
        self._health = health
        self._calls = 0
        self._connections: set[_Connection] = set()
        self._server: gevent.server.StreamServer | None = None
        self._idle = gevent.event.Event()
        self._idle.set()

    def start(self) -> int:
        """Serve from now on; the port bound. Raises RuntimeError when it cannot be bound."""
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        listener = gevent.socket.socket(family, socket.SOCK_STREAM)  # cooperative, patched or not
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            listener.bind((self.settings.host, self.settings.grpc_port))
        except OSError as error:
            listener.close()
            raise RuntimeError(f"GRPC_PORT={self.settings.grpc_port} cannot be bound: {error}") from None
        listener.listen(1024)
        self._server = gevent.server.StreamServer(listener, self._serve)
        self._server.start()
        port = listener.getsockname()[1]
        services = sorted({path.strip("/").split("/")[0] for path in self.table})
        log.info("gRPC: serving %s on %s:%d (HTTP/2 on the gevent hub)", ", ".join(services), self.settings.host, port)
        return port

    def stop(self, grace_s: float) -> Callable[[float | None], bool]:
        """Say NOT_SERVING, take no new connection or call, and let the calls in flight end within `grace_s`.

        Returns a wait for that: True once every call is answered, False if some outlasted `grace_s`
        (their connections are then closed).
        """
        if self._server is None:
            return lambda timeout=None: True
        self._health.enter_graceful_shutdown()
        self._server.close()
        for connection in list(self._connections):
            connection.go_away()
        deadline = time.monotonic() + grace_s

        def wait(timeout: float | None = None) -> bool:
            limit = deadline if timeout is None else min(deadline, time.monotonic() + timeout)
            drained = self._idle.wait(max(limit - time.monotonic(), 0.0))
            if not drained and time.monotonic() >= deadline:
                for connection in list(self._connections):
                    connection.close_now()
            return bool(drained)

        return wait

    def call_started(self) -> bool:
        """Count a call in, unless `concurrency` are running."""
        if self._calls >= self.concurrency:
            return False
        self._calls += 1
        self._idle.clear()
        return True

    def call_ended(self) -> None:
        self._calls -= 1
        if self._calls == 0:
            self._idle.set()

    def _serve(self, sock: socket.socket, address: tuple) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(self, sock, address)
        self._connections.add(connection)
        try:
            connection.serve()
        finally:
            self._connections.discard(connection)
