"""Each worker's gRPC server (TF Serving's gRPC API, the Open Inference Protocol's, health) on GRPC_PORT.

Started in the worker once its model is warmed up (gunicorn.conf.py's `post_worker_init`),
never in the master: gRPC's threads, like TensorFlow's, do not survive `fork()`. Every worker
binds the same port with SO_REUSEPORT, and the kernel spreads new *connections* over the
workers, not calls: a client's channel is one HTTP/2 connection, so all its calls go to one
worker. GRPC_MAX_CONNECTION_AGE_S closes connections after that long (calls in flight finish
first), so a long-lived channel reconnects and lands on a worker picked again
(docs/protocols.md).

A call is served as a WSGI request through the same layers as HTTP ones (`serve_call`): its
method is the path, its serialized message the body, its metadata the headers (`authorization`,
`x-api-key`, `x-request-id`), its deadline the `X-Request-Timeout-Ms`; the HTTP status of the
answer becomes the call's gRPC status (STATUS_CODES; REFUSAL_CODES for refusals gRPC names otherwise)
and the error's message its details.

The methods (`method_table`) are served by grpcio's server (`GrpcServer`) under the gthread
worker class, and from the worker's hub under gevent (service/web/grpc_h2.py).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import orjson

from service.errors import WsgiApp
from service.pipeline.inference import PROTOCOL_KEY, REFUSED_KEY
from service.settings import Settings

log = logging.getLogger(__name__)

# The gRPC status of each HTTP status the layers answer with; any other is INTERNAL.
STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    422: "INVALID_ARGUMENT",
    503: "UNAVAILABLE",  # a refusal: the details say why, `retry-after` and `grpc-retry-pushback-ms` when to retry
    504: "DEADLINE_EXCEEDED",
}
# Refusals (503 over HTTP) that retrying elsewhere cannot help, which gRPC's clients expect by their own code:
# a deadline that cannot be met is DEADLINE_EXCEEDED (TF Serving's and gRPC's convention), not UNAVAILABLE.
REFUSAL_CODES = {"deadline_unreachable": "DEADLINE_EXCEEDED"}
# Call metadata read as request headers, and answer headers sent back as trailing metadata.
REQUEST_HEADERS = {
    "authorization": "HTTP_AUTHORIZATION",
    "x-api-key": "HTTP_X_API_KEY",
    "x-request-id": "HTTP_X_REQUEST_ID",
}
ANSWER_HEADERS = {"X-Request-ID": "x-request-id", "Retry-After": "retry-after", "X-Batch-Size": "x-batch-size"}
NO_DEADLINE_S = 1e8  # gRPC reports a call without a deadline as one about 290 years away


def answer_call(app: WsgiApp, method: str, body: bytes, context: Any, protocol: str) -> CallAnswer:
    """What the WSGI `app` answers a call's message `body` with, as a request to path `method`."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": method,
        "SERVER_PROTOCOL": "HTTP/2",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "REMOTE_ADDR": _peer_address(context.peer()),
        PROTOCOL_KEY: protocol,
    }
    for key, value in context.invocation_metadata():
        if key in REQUEST_HEADERS and isinstance(value, str):
            environ[REQUEST_HEADERS[key]] = value
    remaining_s = context.time_remaining()
    if remaining_s is not None and remaining_s < NO_DEADLINE_S:
        environ["HTTP_X_REQUEST_TIMEOUT_MS"] = repr(max(remaining_s * 1000, 0.001))
    answered: dict = {}

    def start_response(status: str, headers: list, exc_info=None) -> None:
        answered["status"], answered["headers"] = int(status[:3]), headers

    answer = b"".join(app(environ, start_response))
    return CallAnswer(answered["status"], answer, answered["headers"], environ.get(REFUSED_KEY))


@dataclass(frozen=True)
class CallAnswer:
    status: int  # HTTP's
    body: bytes  # the serialized response, or the error's JSON
    headers: list[tuple[str, str]]
    refused: str | None  # why it was refused unrun (REFUSED_KEY)


def serve_call(app: WsgiApp, method: str, body: bytes, context: Any, protocol: str) -> bytes:
    """One unary call answered by the WSGI `app`: its answer's body, or `context.abort` with the error."""
    answer = answer_call(app, method, body, context, protocol)
    trailing = [(ANSWER_HEADERS[name], value) for name, value in answer.headers if name in ANSWER_HEADERS]
    retry_after = next((value for name, value in answer.headers if name == "Retry-After"), None)
    if retry_after is not None:  # what gRPC's own retry policy honours
        trailing.append(("grpc-retry-pushback-ms", str(1000 * int(retry_after))))
    context.set_trailing_metadata(tuple(trailing))
    if answer.status == 200:
        return answer.body
    import grpc

    name = REFUSAL_CODES.get(answer.refused) or STATUS_CODES.get(answer.status, "INTERNAL")
    context.abort(getattr(grpc.StatusCode, name), orjson.loads(answer.body)["error"])
    raise AssertionError("context.abort raises")  # pragma: no cover


# A streaming method: its requests' bodies in, its responses' out; each request answered through `answer`
# (a method's path and a body -> HTTP status and body, as a unary call of that method).
StreamMethod = Callable[[Iterable[bytes], Callable[[str, bytes], tuple[int, bytes]]], Iterable[bytes]]


@dataclass(frozen=True)
class Method:
    """How one gRPC method is called: `unary_unary` handlers take (body, context) and return the answer's body,
    `unary_stream` ones return the answers' bodies, `stream_stream` ones take the requests' bodies instead."""

    kind: str
    handler: Callable[[Any, Any], Any]


HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


def method_table(
    app: WsgiApp, methods: dict[str, str], streams: dict[str, tuple[str, StreamMethod]], health: Any
) -> dict[str, Method]:
    """Every method a worker serves over gRPC, whichever transport serves them.

    `methods` maps each unary method to its protocol (for metrics and the access log), `streams`
    each streaming method to its protocol and handler; `health` is the grpc.health.v1 servicer.
    """
    from grpc_health.v1 import health_pb2

    def unary(method: str, protocol: str) -> Method:
        return Method("unary_unary", lambda body, context: serve_call(app, method, body, context, protocol))

    def stream(handler: StreamMethod, protocol: str) -> Method:
        def handle(requests: Iterable[bytes], context: Any) -> Iterable[bytes]:
            def answer(method: str, body: bytes) -> tuple[int, bytes]:
                answered = answer_call(app, method, body, context, protocol)
                return answered.status, answered.body

            return handler(requests, answer)

        return Method("stream_stream", handle)

    def check(body: bytes, context: Any) -> bytes:
        return health.Check(health_pb2.HealthCheckRequest.FromString(body), context).SerializeToString()

    def watch(body: bytes, context: Any) -> Iterable[bytes]:
        request = health_pb2.HealthCheckRequest.FromString(body)
        return (response.SerializeToString() for response in health.Watch(request, context))

    table = {method: unary(method, protocol) for method, protocol in methods.items()}
    table |= {method: stream(handler, protocol) for method, (protocol, handler) in streams.items()}
    return table | {HEALTH_CHECK: Method("unary_unary", check), HEALTH_WATCH: Method("unary_stream", watch)}


class GrpcServer:
    """The gthread worker's gRPC server, grpcio's: `start()` binds GRPC_PORT and serves `table`; `stop()` drains it.

    `health` is told when the worker drains (NOT_SERVING). Under gevent, grpc_h2.H2GrpcServer
    serves the same table instead.
    """

    def __init__(self, table: dict[str, Method], health: Any, settings: Settings, concurrency: int):
        self._table = table
        self._health = health
        self._settings = settings
        self._concurrency = concurrency
        self._server = None

    def start(self) -> int:
        """Serve from now on; the port bound. Raises RuntimeError when it cannot be bound."""
        import grpc

        settings = self._settings
        handlers: dict[str, dict] = {}
        for path, method in self._table.items():
            service, name = path.strip("/").split("/")
            handlers.setdefault(service, {})[name] = getattr(grpc, f"{method.kind}_rpc_method_handler")(method.handler)
        options = [
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
        if settings.grpc_max_connection_age_s:
            options += [
                ("grpc.max_connection_age_ms", int(1000 * settings.grpc_max_connection_age_s)),
                ("grpc.max_connection_age_grace_ms", 1000 * settings.graceful_timeout_s),
            ]
        # Calls beyond `concurrency` are refused by gRPC at once (RESOURCE_EXHAUSTED), never queued unbounded.
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="grpc"),
            handlers=[grpc.method_handlers_generic_handler(service, named) for service, named in handlers.items()],
            options=options,
            maximum_concurrent_rpcs=self._concurrency,
        )
        port = self._server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        self._server.start()
        log.info("gRPC: serving %s on %s:%d (grpcio)", ", ".join(sorted(handlers)), settings.host, port)
        return port

    def stop(self, grace_s: float) -> Callable[[float | None], bool]:
        """Say NOT_SERVING, refuse new calls now, end the ones in flight within `grace_s`; returns a wait for that."""
        if self._server is None:
            return lambda timeout=None: True
        self._health.enter_graceful_shutdown()
        return self._server.stop(grace_s).wait


def _peer_address(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` or `ipv6:[::1]:5000` -> the address alone."""
    address = peer.partition(":")[2]
    host, _, port = address.rpartition(":")
    return host.strip("[]") if port.isdigit() else address
