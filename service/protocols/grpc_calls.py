"""What the gRPC APIs' unary methods other than inference share: parsing their message and answering it.

The transport (service/web/grpc_server.py) hands each call over as a WSGI request whose path is
the method and whose body the serialized message; the answer's body is the serialized response,
or an error's JSON as every protocol's, which the transport turns into the call's status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from google.protobuf.message import DecodeError, Message

from service.errors import BadRequest, NotFound, WsgiApp, render, write_json
from service.pipeline.answers import api_error_for
from service.pipeline.body import read_body
from service.pipeline.inference import PROTOCOL_KEY, ROUTE_KEY
from service.pipeline.model_server import ModelServer

PROTOBUF_CONTENT_TYPE = {"Content-Type": "application/x-protobuf"}


class MethodCalls:
    """WSGI middleware: the methods `answers()` names are answered here, other paths by `fallback`."""

    protocol: str

    def __init__(self, server: ModelServer, fallback: WsgiApp):
        self._server = server
        self._fallback = fallback
        self._answers = self.answers()

    def answers(self) -> dict[str, Callable[[bytes], Message]]:
        """Each method's path, and what answers its serialized request."""
        raise NotImplementedError

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        answer = self._answers.get(environ.get("PATH_INFO", ""))
        if answer is None:
            return self._fallback(environ, start_response)
        environ[ROUTE_KEY], environ[PROTOCOL_KEY] = environ["PATH_INFO"], self.protocol
        try:
            body = answer(read_body(environ, self._server.settings.max_body_bytes)).SerializeToString()
        except Exception as error:
            return write_json(start_response, *render(api_error_for(error, self._server)))
        return write_json(start_response, 200, body, PROTOBUF_CONTENT_TYPE)


def parse(message: type[Message], body: bytes) -> Message:
    """The message `body` holds; BadRequest when it is not one."""
    try:
        return message.FromString(body)
    except DecodeError as error:
        raise BadRequest(f"the request is not a valid {message.DESCRIPTOR.full_name}: {error}") from None


def unknown_method(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """The last fallback: a method not served is a 404 (a method gRPC does not know is UNIMPLEMENTED by gRPC)."""
    return write_json(start_response, *render(NotFound(f"method {environ.get('PATH_INFO')!r} is not served here")))
