"""Hostile requests on real Gunicorn servers, gthread and gevent: each case found by hand, then a fuzz harness.

Raw sockets for HTTP (request lines, headers, bodies, pipelining) and gRPC messages of any shape.
Every answer must come within the read timeout, be a client error (4xx, or the gRPC code that
means one) or a success, carry a JSON error when it is an error, and leave the worker's process
as it was: the same pid, answering a normal request. docs/reliability.md, "Hostile requests".

`make fuzz` runs the harness longer (HOSTILE_EXAMPLES examples per worker class and port).
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
import zlib

import grpc
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.tfserving_messages import DataType, PredictRequest, PredictResponse
from tests.strategies import predict_requests
from tests.support import worker_pids, write_scaling_onnx

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 2  # the servers' READ_TIMEOUT_S: a request left incomplete is answered 408 after it
ANSWER_WITHIN_S = READ_TIMEOUT_S + 10
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
PREDICT = "/tensorflow.serving.PredictionService/Predict"
BODY = b'{"instances": [[1.0, 2.0]]}'
# What a client may get: a success, a client error, 501 for a transfer coding Gunicorn does not know
# (RFC 9112 6.1), 504 for a deadline of its own that passed, 503 for one that cannot be met.
ALLOWED_STATUSES = {200, 202, *range(400, 500), 501, 503, 504}
GRPC_CLIENT_ERRORS = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
}  # fmt: skip


@pytest.fixture(scope="module", params=["gthread", "gevent"])
def hostile_server(request, launch_server, tmp_path_factory):
    """One worker (every connection on it) serving version 1 of the scaling model, y = x, over HTTP and gRPC."""
    base = tmp_path_factory.mktemp("hostile") / "scaler"
    write_scaling_onnx(base / "1" / "model.onnx", 1.0)
    server = launch_server(
        MODEL_BASE_PATH=str(base), WORKERS="1", WORKER_CLASS=request.param, READ_TIMEOUT_S=str(READ_TIMEOUT_S),
        MAX_BODY_BYTES=str(1 << 20), MODEL_POLL_S="0",
    )  # fmt: skip
    server.wait_for_grpc(1)
    server.pid = next(iter(worker_pids(server.process.pid)))
    yield server
    server.stop()


def exchange(server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; the first answer's status, headers (lowercase names) and body, within ANSWER_WITHIN_S.

    An answer to HEAD has no body, whatever its Content-Length says.
    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_WITHIN_S) as connection:
        connection.sendall(data)
        received = b""
        deadline = time.monotonic() + ANSWER_WITHIN_S
        while time.monotonic() < deadline:
            head, found, body = received.partition(b"\r\n\r\n")
            if found:
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = 0 if data.startswith(b"HEAD ") else int(headers.get("content-length", 0))
                if len(body) >= length:
                    return int(lines[0].split()[1]), headers, body[:length]
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            received += chunk
    raise AssertionError(f"no whole answer to {data[:200]!r}: got {received[:200]!r}")


def assert_answered_well(status: int, headers: dict, body: bytes, sent: bytes) -> None:
    assert status in ALLOWED_STATUSES, (status, body, sent[:300])
    if status >= 400 and not sent.startswith(b"HEAD"):
        assert headers.get("content-type") == "application/json", (status, headers, body, sent[:300])
        error = json.loads(body)["error"]
        assert isinstance(error, str) and error, (status, body)


def assert_unharmed(server) -> None:
    """The worker's process is the one that started, and it serves a normal request."""
    assert worker_pids(server.process.pid) == {server.pid}, "the worker was replaced: something ended it"
    answer = requests.post(server.url + "/v1/models/scaler:predict", data=BODY, timeout=30)
    assert answer.status_code == 200 and answer.json() == {"predictions": [[1.0, 2.0]]}


def request_bytes(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [
        method + b" " + target + b" HTTP/1.1",
        b"Host: hostile",
        *(name + b": " + value for name, value in headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


HAND_FOUND = {
    "a 5,000-digit Content-Length": (request_bytes(b"POST", b"/predict", [(b"Content-Length", b"9" * 5000)]), 400),
    "a negative Content-Length": (request_bytes(b"POST", b"/predict", [(b"Content-Length", b"-5")]), 400),
    "a 5,000-digit Inference-Header-Content-Length": (
        request_bytes(
            b"POST", b"/v2/models/scaler/infer",
            [(b"Inference-Header-Content-Length", b"9" * 5000), (b"Content-Length", b"2")], b"{}",
        ),
        400,
    ),
    "a header over the limit": (request_bytes(b"GET", b"/healthz", [(b"X-Big", b"a" * 9000)]), 431),
    "an unusable X-Request-ID": (request_bytes(b"GET", b"/healthz", [(b"X-Request-ID", b"a\x01b")]), 400),
    "a 3,000-digit job priority": (request_bytes(b"POST", b"/v1/models/scaler/jobs?priority=" + b"9" * 3000, []), 400),
    "a 5,000-digit request line": (request_bytes(b"POST", b"/v1/models/scaler/jobs?priority=" + b"9" * 5000, []), 414),
    "a gzip body": (
        request_bytes(
            b"POST", b"/v1/models/scaler:predict",
            [(b"Content-Encoding", b"gzip"), (b"Content-Length", str(len(gzip.compress(BODY))).encode())],
            gzip.compress(BODY),
        ),
        200,
    ),
    "a deflate body": (
        request_bytes(
            b"POST", b"/v2/models/scaler/infer",
            [(b"Content-Encoding", b"deflate"), (b"Content-Length", str(len(zlib.compress(b"{}"))).encode())],
            zlib.compress(b"{}"),
        ),
        400,  # decompressed and read: an empty V2 request
    ),
    "a brotli body": (
        request_bytes(b"POST", b"/predict", [(b"Content-Encoding", b"br"), (b"Content-Length", b"2")], b"{}"),
        415,
    ),
}  # fmt: skip


def test_each_hostile_request_found_by_hand_gets_its_client_error_and_ends_no_worker(hostile_server):
    for case, (data, expected) in HAND_FOUND.items():
        status, headers, body = exchange(hostile_server, data)
        assert status == expected, (case, status, body)
        assert_answered_well(status, headers, body, data)
    assert_unharmed(hostile_server)


def grpc_predict(channel: grpc.Channel, message: bytes, timeout_s: float = 30) -> grpc.StatusCode:
    call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=PredictResponse.FromString)
    try:
        call(message, timeout=timeout_s)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def image_request(dims: list[int]) -> bytes:
    """A PredictRequest of a few bytes: one float_val standing for every element of `dims`."""
    request = PredictRequest()
    request.model_spec.name = "scaler"
    tensor = request.inputs["x"]
    tensor.dtype = DataType.Value("DT_FLOAT")
    tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=size) for size in dims)
    tensor.float_val.append(0.5)
    return request.SerializeToString()


def test_grpc_messages_declaring_huge_tensors_are_refused_at_once_and_a_1_ms_deadline_is_never_unavailable(
    hostile_server,
):
    with grpc.insecure_channel(hostile_server.grpc_target) as channel:
        for dims in ([200_000, 2], [2**40, 2], [2**62, 2], [1, 2**40]):
            started = time.monotonic()
            assert grpc_predict(channel, image_request(dims)) == grpc.StatusCode.INVALID_ARGUMENT, dims
            assert time.monotonic() - started < 5  # refused before expanding: milliseconds, once seconds
        assert grpc_predict(channel, b"\xff\xff not a protobuf") == grpc.StatusCode.INVALID_ARGUMENT
        for _ in range(20):  # answered in time, or not: never UNAVAILABLE, which tells a client to retry elsewhere
            code = grpc_predict(channel, image_request([1, 2]), timeout_s=0.001)
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED), code
    assert_unharmed(hostile_server)


# The fuzz harness: requests built from parts that have hurt HTTP servers.
methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"G\x01T", b"post"])
targets = st.sampled_from([
    b"/predict", b"/v1/models/scaler:predict", b"/v1/models/scaler/versions/1:predict",
    b"/v1/models/scaler/labels/x:predict", b"/v2/models/scaler/infer", b"/v2/models/scaler/versions/9/infer",
    b"/v1/models/scaler/jobs", b"/v1/jobs/00000000-" + b"0" * 32, b"/healthz", b"/readyz", b"/metrics",
    b"/v1/models/scaler", b"/v2/models/scaler", b"/openapi.json", b"/nope", b"*", b"http://x/predict",
]).flatmap(lambda target: st.sampled_from([
    target, target + b"?priority=" + b"9" * 30, target + b"%00", target + b"/../..", target + b"?" + b"a" * 200
]))  # fmt: skip
numbers = st.sampled_from([b"0", b"1", b"-1", b"9" * 20, b"9" * 5000, b"0x10", b"1e3", b"", b" 5", b"\xd9\xa1"])
header_values = st.one_of(
    numbers, st.binary(max_size=40).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))
)
header_names = st.sampled_from([
    b"Content-Type", b"Content-Encoding", b"Transfer-Encoding", b"Expect", b"X-Request-ID", b"X-Request-Timeout-Ms",
    b"Inference-Header-Content-Length", b"Connection", b"Authorization", b"X-API-Key", b"Accept-Encoding",
    b"Content-Length", b"X-Unknown", b"Bad Name", b"\x00",
])  # fmt: skip
bodies = st.one_of(
    st.just(b""), st.just(BODY), st.binary(max_size=300), st.just(gzip.compress(BODY)), st.just(b"{}" * 100),
    st.just(b'{"instances": ' + b"[" * 2000 + b"]" * 2000 + b"}"), st.just(b'{"inputs": [{"name": "x", "shape": '
    b'[1, 1099511627776], "datatype": "FP32", "data": [1]}]}'),
)  # fmt: skip


@st.composite
def raw_requests(draw) -> bytes:
    body = draw(bodies)
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    if not any(name == b"Content-Length" for name, _ in headers) and draw(st.booleans()):
        headers.append((b"Content-Length", str(len(body)).encode()))
    data = request_bytes(draw(methods), draw(targets), headers, body)
    if draw(st.booleans()):
        data += request_bytes(b"GET", b"/healthz", [])  # pipelined behind it
    return data


@FUZZ
@given(data=raw_requests())
def test_fuzzed_http_requests_get_answers_a_client_can_read_and_end_no_worker(hostile_server, data):
    status, headers, body = exchange(hostile_server, data)
    assert_answered_well(status, headers, body, data)
    assert worker_pids(hostile_server.process.pid) == {hostile_server.pid}


@FUZZ
@given(request=predict_requests(names=("x", "y"), model="scaler") | st.binary(max_size=200))
def test_fuzzed_grpc_messages_get_a_client_error_code_and_end_no_worker(hostile_server, request):
    message = request if isinstance(request, bytes) else request.SerializeToString()
    with grpc.insecure_channel(hostile_server.grpc_target) as channel:
        assert grpc_predict(channel, message) in GRPC_CLIENT_ERRORS
    assert worker_pids(hostile_server.process.pid) == {hostile_server.pid}


def test_after_the_fuzzing_the_worker_is_the_one_that_started_and_serves(hostile_server):
    assert_unharmed(hostile_server)
