"""One gRPC call as the gevent worker's transport (service/web/grpc_h2.py) holds it: its messages, status and context.

Apart from HTTP/2: a call's messages are gRPC's own framing inside the stream's DATA (a
compressed flag and a length before each), its deadline is the `grpc-timeout` header, and its
handler sees a `CallContext` that answers as grpc.ServicerContext's methods of the same names.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import gevent.queue
import grpc

from service.web.grpc_server import Method

STATUS = {code.name: code.value[0] for code in grpc.StatusCode}  # gRPC's status codes' numbers, by name
TIMEOUT_UNITS_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
PREFIX = struct.Struct(">BI")  # each gRPC message: compressed flag, length


class CallAborted(Exception):
    """Raised by `CallContext.abort`: the call ends with this status and message."""

    def __init__(self, code: int, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class CallContext:
    """What a handler may ask of its call, as grpc.ServicerContext's methods of the same names answer it."""

    def __init__(self, peer: str, metadata: list[tuple[str, str]], deadline: float | None):
        self._peer = peer
        self._metadata = metadata
        self._deadline = deadline
        self.trailing: tuple = ()
        self.code = 0
        self.active = True
        self._callbacks: list[Callable[[], None]] = []

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def set_trailing_metadata(self, metadata: tuple) -> None:
        self.trailing = metadata

    def set_code(self, code: Any) -> None:
        self.code = _number(code)

    def abort(self, code: Any, details: str) -> None:
        raise CallAborted(_number(code), details)

    def is_active(self) -> bool:
        return self.active

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._callbacks.append(callback)
        return True

    def end(self) -> None:
        """The call is over (answered, or cancelled by the client): its callbacks run, once."""
        self.active = False
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class CallStream:
    """One call's state on its connection. A unary request's message is kept until the stream ends, then the
    call starts; a streaming request's messages go to the call as they arrive (`messages`)."""

    def __init__(self, method: Method, context: CallContext, encoding: bytes, max_message_bytes: int):
        self.method = method
        self.context = context
        self.encoding = encoding
        self.max_message_bytes = max_message_bytes
        self.buffer = bytearray()
        self.received: list[bytes] = []  # a unary request's messages
        streaming = method.kind == "stream_stream"
        self.messages: gevent.queue.Queue | None = gevent.queue.Queue() if streaming else None  # then None
        self.error: CallAborted | None = None  # a message refused while reading
        self.started = False  # its call's greenlet runs
        self.closed = False  # reset by the client, or answered
        self.received_bytes = 0  # since our last WINDOW_UPDATE of the stream

    def receive(self, data: bytes) -> None:
        """Take bytes of the stream; each complete message goes to the call. After a refused message, drop them."""
        if self.error is not None:
            return
        if not self.buffer and len(data) >= PREFIX.size and self.messages is None and self.error is None:
            compressed, length = PREFIX.unpack_from(data)
            if not compressed and len(data) == PREFIX.size + length <= PREFIX.size + self.max_message_bytes:
                self.received.append(data[PREFIX.size :])  # a whole message in one frame: most unary calls
                return
        self.buffer += data
        while len(self.buffer) >= PREFIX.size and self.error is None:
            compressed, length = PREFIX.unpack_from(self.buffer)
            if length > self.max_message_bytes:
                self.error = CallAborted(
                    STATUS["RESOURCE_EXHAUSTED"],
                    f"a message of {length} bytes is over the {self.max_message_bytes} bytes allowed (MAX_BODY_BYTES)",
                )
                return
            if len(self.buffer) < PREFIX.size + length:
                return
            message = bytes(self.buffer[PREFIX.size : PREFIX.size + length])
            del self.buffer[: PREFIX.size + length]
            if compressed:
                message = self._decompress(message)
            if self.error is None:
                if self.messages is None:
                    self.received.append(message)
                else:
                    self.messages.put(message)

    def finish(self) -> None:
        """The client sent its last message (or the stream is gone)."""
        if self.buffer and self.error is None:
            self.error = CallAborted(STATUS["INTERNAL"], "the stream ended inside a message")
        if self.messages is not None:
            self.messages.put(None)

    def _decompress(self, message: bytes) -> bytes:
        """The message inflated, to at most `max_message_bytes` (a small message may inflate to gigabytes)."""
        window_bits = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}.get(self.encoding)
        if window_bits is None:
            self.error = CallAborted(
                STATUS["UNIMPLEMENTED"],
                f"grpc-encoding {self.encoding.decode('latin-1')!r} is not served (identity, gzip, deflate)",
            )
            return b""
        inflater = zlib.decompressobj(window_bits)
        try:
            inflated = inflater.decompress(message, self.max_message_bytes + 1)
        except zlib.error as error:
            self.error = CallAborted(
                STATUS["INTERNAL"], f"a {self.encoding.decode()} message does not inflate: {error}"
            )
            return b""
        if len(inflated) > self.max_message_bytes or inflater.unconsumed_tail:
            self.error = CallAborted(
                STATUS["RESOURCE_EXHAUSTED"],
                f"a message inflates to over the {self.max_message_bytes} bytes allowed (MAX_BODY_BYTES)",
            )
            return b""
        return inflated


def messages_of(stream: CallStream) -> Iterator[bytes]:
    while (message := stream.messages.get()) is not None:
        yield message
    if stream.error is not None:
        raise stream.error


def deadline_of(header: bytes | None) -> float | None:
    """A `grpc-timeout` (digits and a unit) as a monotonic deadline; None without one, or a malformed one."""
    if not header or len(header) > 9 or not header[:-1].isdigit():
        return None
    unit_s = TIMEOUT_UNITS_S.get(chr(header[-1]))
    return None if unit_s is None else time.monotonic() + int(header[:-1]) * unit_s


def _number(code: Any) -> int:
    """A grpc.StatusCode (whose value is (number, name)) or a number, as its number."""
    return code.value[0] if hasattr(code, "value") else int(code)
