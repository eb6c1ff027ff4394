"""What the two worker classes share to bound slow and stalled clients.

Gunicorn's own workers give a connection a greenlet or a thread before its request has
arrived, and read it with no time limit (the gevent worker bounds only the head, silently,
by `keepalive`): clients that stall mid-head or mid-body exhaust the pool and stop all
service. The workers in service/web/gevent_worker.py and service/web/gthread_worker.py instead
receive each request whole first, with deadlines (`IncomingRequest`), and only then hand it
to Gunicorn's parser and the app, so a stalled client holds nothing but its connection:

- a new connection that sends nothing is closed silently after max(KEEPALIVE_S, READ_TIMEOUT_S);
  a kept-alive one after KEEPALIVE_S, as before;
- the head (request line and headers) must arrive within READ_TIMEOUT_S of its first byte
  (nginx's `client_header_timeout`), so trickling it does not help;
- the body may pause at most READ_TIMEOUT_S between bytes (nginx's `client_body_timeout`),
  so a `Content-Length` that promises more than arrives holds the connection that long;
- when either deadline passes, the client gets 408 with a JSON error and `Connection: close`.

This module imports neither gevent nor Gunicorn's workers, so each worker class loads only
what it uses, and it can be tested without a server.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gunicorn import SERVER, util
from gunicorn.util import http_date

from service.errors import RequestTimeout, error_body, render
from service.jobs import SUBMISSION_REQUEST_LINE
from service.settings import Settings, current_settings
from service.web.framing import RequestFraming, max_head_bytes

log = logging.getLogger(__name__)

# gunicorn.conf.py's `worker_class` for each WORKER_CLASS setting.
WORKER_CLASSES = {
    "gevent": "service.web.gevent_worker.GeventWorker",
    "gthread": "service.web.gthread_worker.ThreadWorker",
}

# Connections one worker keeps open, idle or still sending their request, besides the ones it
# serves. Each costs a file descriptor and a few kilobytes (a greenlet, or a buffer in the
# gthread poller); the open-file limit lowers it.
MAX_OPEN_CONNECTIONS = 10_000
# Files a worker opens besides its connections: model files, logs, metric files, pipes.
RESERVED_FILES = 256
# Used when the hard open-file limit is unlimited: Linux's default `fs.nr_open`.
UNLIMITED_FILES_TARGET = 1 << 20
RECV_BYTES = 64 * 1024
# How long a connection being closed after an error waits for the client's FIN, so an
# unread request does not make the kernel reset the connection before the answer is read.
LINGER_S = 2.0
# A stopping worker closes connections that have sent nothing of a request after this (Gunicorn's
# gthread STOP_KEEPALIVE_LINGER), not after their whole allowance: one may be about to send.
STOP_IDLE_LINGER_S = 2.0
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A worker whose app failed to load while others serve waits this many times its failed attempt
# before it exits to be replaced, so a load that keeps failing takes at most 1/(1 + this) of a core;
# twice as long after each failure in a row, up to 2**STEP_ASIDE_MAX_DOUBLINGS times (as Kubernetes'
# back-off of a crashing container), which also bounds its log lines.
STEP_ASIDE_PAUSE_RATIO = 4
STEP_ASIDE_MAX_DOUBLINGS = 4
STEP_ASIDE_EXIT_CODE = 1  # Gunicorn replaces a worker that exits so; 3 (a boot error) stops the master


def kept_alive_response(status: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """A whole HTTP/1.1 answer that keeps its connection open, with the head Gunicorn would write.

    For answers the workers write themselves (an early refusal, the fast path): one buffer, one send.
    `status` is WSGI's ("200 OK"); Content-Length is the body's, whatever `headers` say.
    """
    lines = [f"HTTP/1.1 {status}\r\nServer: {SERVER}\r\nDate: {http_date()}\r\nConnection: keep-alive\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers if name.lower() != "content-length"]
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(lines).encode("latin-1") + body


@dataclass(frozen=True)
class ReadPolicy:
    """How one worker receives requests: deadlines and the sizes at which the parser takes over."""

    read_timeout_s: float
    keepalive_s: float
    max_head_bytes: int
    max_body_bytes: int
    max_job_body_bytes: int = 0

    @classmethod
    def for_worker(cls, cfg, settings: Settings) -> ReadPolicy:
        """From Gunicorn's config (keepalive, header limits) and the service's settings."""
        return cls(
            read_timeout_s=settings.read_timeout_s,
            keepalive_s=cfg.keepalive,
            max_head_bytes=max_head_bytes(
                cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
            ),
            max_body_bytes=settings.max_body_bytes,
            max_job_body_bytes=settings.max_job_body_bytes,
        )

    def new_request(self, now: float, kept_alive: bool, received: bytes = b"") -> IncomingRequest:
        """A request starting to arrive at `now`; `received` holds bytes already read (pipelined)."""
        silent_s = self.keepalive_s if kept_alive else max(self.keepalive_s, self.read_timeout_s)
        framing = RequestFraming(self.max_head_bytes, self.max_body_bytes, received, self.body_limit)
        return IncomingRequest(framing, self.read_timeout_s, silent_s, now)

    def body_limit(self, request_line: bytes) -> int:
        """MAX_BODY_BYTES, or MAX_JOB_BODY_BYTES for a job's submission (received whole like any request)."""
        if self.max_job_body_bytes > self.max_body_bytes and SUBMISSION_REQUEST_LINE.fullmatch(request_line):
            return self.max_job_body_bytes
        return self.max_body_bytes

    def timeout_response(self, stage: str) -> bytes:
        """The 408 answer for a request that stalled in `stage` ("head" or "body")."""
        if stage == "head":
            message = (
                f"the request's head (request line and headers) did not arrive within {self.read_timeout_s:g} s "
                "of its first byte (READ_TIMEOUT_S); send the whole request at once"
            )
        else:
            message = (
                f"the request's body stopped arriving: nothing for {self.read_timeout_s:g} s (READ_TIMEOUT_S); "
                "check that Content-Length matches the body sent"
            )
        _, body, _ = render(RequestTimeout(message))
        head = (
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode("latin-1") + body


class IncomingRequest:
    """One request being received: its bytes so far and the time by which more must come.

    `deadline` (a `time.monotonic()` value) depends on what has arrived: while nothing has,
    the connection's silent allowance; during the head, READ_TIMEOUT_S from its first byte;
    during the body, READ_TIMEOUT_S from the last byte. The caller reads until `ready` or
    the deadline, then answers 408 if `started` (or closes silently if not).
    """

    def __init__(self, framing: RequestFraming, read_timeout_s: float, silent_s: float, now: float):
        self.framing = framing
        self._read_timeout_s = read_timeout_s
        self._silent_until = now + silent_s
        self._first_byte_at = now if framing.started else None
        self._last_byte_at = self._first_byte_at
        self.continue_sent = False

    def receive(self, data: bytes, now: float) -> None:
        if self._first_byte_at is None:
            self._first_byte_at = now
        self._last_byte_at = now
        self.framing.receive(data)

    @property
    def ready(self) -> bool:
        return self.framing.ready

    @property
    def received_at(self) -> float | None:
        """When its first byte arrived: the request's start, for its duration."""
        return self._first_byte_at

    @property
    def started(self) -> bool:
        return self.framing.started

    @property
    def stage(self) -> str:
        """What the client is (or was, when it stalled) sending: "idle", "head" or "body"."""
        if not self.framing.started:
            return "idle"
        return "body" if self.framing.head_complete else "head"

    @property
    def deadline(self) -> float:
        if self._first_byte_at is None:
            return self._silent_until
        if not self.framing.head_complete:
            return self._first_byte_at + self._read_timeout_s
        return self._last_byte_at + self._read_timeout_s

    @property
    def needs_continue(self) -> bool:
        """The client waits for `100 Continue` before sending the body: the caller sends it, then `continued()`."""
        return self.framing.expects_continue and not self.continue_sent and not self.framing.ready

    def continued(self) -> None:
        self.continue_sent = True

    def take(self) -> bytes:
        return self.framing.take()


def reads_requests_whole(cfg) -> bool:
    """Whether the workers receive requests themselves before Gunicorn parses them.

    Not over TLS, the PROXY protocol or HTTP/2 prior knowledge, which Gunicorn must see
    from the first byte (this service configures none of them); those fall back to
    Gunicorn's own reading, unbounded as before.
    """
    return not cfg.is_ssl and cfg.proxy_protocol == "off" and cfg.http2_cleartext not in ("prior-knowledge", "both")


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now in force.

    Each connection takes a file descriptor, and the usual soft limit (1,024) is below
    what a worker holds. Raising the soft limit up to the hard one needs no privilege.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_FILES_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, error)
        return soft
    return target


def open_connection_cap(open_file_limit: int, served_at_once: int) -> int:
    """Connections one worker keeps open: those it serves plus idle or arriving ones, within its files."""
    if open_file_limit == resource.RLIM_INFINITY:
        open_file_limit = UNLIMITED_FILES_TARGET
    return max(served_at_once, min(MAX_OPEN_CONNECTIONS, open_file_limit - RESERVED_FILES))


def prepare_to_read(worker, served_at_once: int) -> int:
    """Both worker classes' `init_process`: set the read policy, whether requests are received whole,
    and `worker_connections` (Gunicorn sizes its pool from it: every open connection, not only those
    served); return the open-file limit in force."""
    worker.read_policy = ReadPolicy.for_worker(worker.cfg, current_settings())
    worker.reads_whole = reads_requests_whole(worker.cfg)
    open_files = raise_open_file_limit()
    worker.worker_connections = open_connection_cap(open_files, served_at_once)
    return open_files


def load_app(worker, load: Callable[[], None]) -> None:
    """Both worker classes' `load_wsgi`: a worker whose app fails to load while others serve steps aside.

    Gunicorn stops the whole service when a worker fails to boot, which is right at the first
    start (the configuration is wrong) and wrong later, when one restarted worker fails (a version
    on disk broken since, a device still busy) while the others serve. Such a worker logs why,
    waits a multiple of its failed attempt (heartbeat kept, SIGTERM heard), then exits with a code
    that makes Gunicorn start another. `worker.others_serve` is set before fork
    (service/sizing/hooks.py, `watch_worker`), with `worker.failed_boots`, the failures in a row before it.
    """
    started = time.monotonic()
    try:
        load()
    except Exception as error:
        if not getattr(worker, "others_serve", False):
            raise  # nothing else serves: Gunicorn stops the service, with this error
        getattr(worker, "report_failure", lambda: None)()  # the master knows at once (a SIGHUP's roll stops)
        from service.backends.base import ModelLoadError  # in the worker: the master imports no numpy

        doublings = min(getattr(worker, "failed_boots", 0), STEP_ASIDE_MAX_DOUBLINGS)
        pause_s = STEP_ASIDE_PAUSE_RATIO * 2**doublings * (time.monotonic() - started)
        worker.log.error(
            "this worker cannot serve: %s: %s; the other workers keep serving, and this one is replaced in %.0f s",
            type(error).__name__, error, pause_s, exc_info=not isinstance(error, ModelLoadError),
        )  # fmt: skip
        resume_at = time.monotonic() + pause_s
        while worker.alive and time.monotonic() < resume_at:
            worker.tmp.notify()  # the master's heartbeat check
            time.sleep(min(1.0, worker.timeout / 2, max(0.0, resume_at - time.monotonic())))
        sys.exit(STEP_ASIDE_EXIT_CODE)


class _KeptAnswer:
    """Stands for the client's socket while Gunicorn writes an error answer: what it writes is kept, not sent."""

    def __init__(self):
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0  # non-blocking already: Gunicorn's `write_nonblock` then writes straight away

    def sendall(self, data: bytes) -> None:
        self.data += data


def answer_in_json(handle_error: Callable, req, client, addr, error: BaseException) -> None:
    """Both worker classes' `handle_error`: Gunicorn's answer to what its parser refused, with a JSON body.

    Gunicorn picks the status (400, 414, 417, 431, 501, or 500 for a fault of ours), logs and writes
    the access line; its body is HTML or plain text. The client gets the same status with
    `{"error": ...}`, as every other error of this server, and the connection closes.
    """
    kept = _KeptAnswer()
    handle_error(req, kept, addr, error)
    status = kept.data.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")[2] or "500 Internal Server Error"
    client_error = status[:1] == "4" or status.startswith("501")
    message = f"{status[4:]}: {error}" if client_error else "internal error: the request could not be handled"
    body = error_body(message)
    head = f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    try:
        util.write_nonblock(client, head.encode("latin-1") + body)
    except Exception:  # the client has gone: nothing to answer
        log.debug("could not send the answer to a refused request")


def count_stalled(stage: str) -> None:
    """Count a connection closed because its client stopped sending (metric `model_server_stalled_connections`)."""
    from service.telemetry import metrics  # in the worker only: the master must not create metric files

    metrics.stalled_connections.labels(stage).inc()
