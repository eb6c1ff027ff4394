"""Gunicorn's gthread worker, receiving each request whole in its poller before a thread serves it.

The rules are in service/web/workers.py. Gunicorn's own gthread worker gives every new
connection a pool thread, which waits up to 5 s for its first bytes and then reads the
head and the body with no time limit: a few dozen stalled clients hold every thread. Here
the main thread's poller receives each request without blocking (`IncomingRequest` says
when it is complete and when it is overdue), and only a complete request is submitted to
the pool. So threads (THREADS) are held by requests being served, never by clients that are
still sending; waiting connections are bounded by `open_connection_cap`, not by the threads.

Two more waits move off the pool and the main thread:
- after an answer, the rest of a body the app did not read is discarded only if it is here
  already; otherwise the connection closes (Gunicorn waited up to 5 s in the thread);
- a connection closed after an answer lingers in the poller for the client's FIN, up to
  LINGER_S (Gunicorn's `close_graceful` blocked the main thread for it).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING

from gunicorn import http, util
from gunicorn.workers import gthread

from service.web.framing import CHUNKED_READ_AHEAD_BYTES
from service.web.workers import (
    CONTINUE_RESPONSE,
    LINGER_S,
    RECV_BYTES,
    STOP_IDLE_LINGER_S,
    IncomingRequest,
    answer_in_json,
    count_stalled,
    load_app,
    prepare_to_read,
)

if TYPE_CHECKING:
    from service.web.backpressure import EarlyRefusal, ParkingLot
    from service.web.fast_path import FastPath


class Connection(gthread.TConn):
    """A gthread connection whose graceful close lingers in its worker's poller instead of blocking it."""

    def __init__(self, worker: ThreadWorker, cfg, sock, client, server):
        super().__init__(cfg, sock, client, server)
        self.worker = worker
        self.continue_sent = False  # this request's `100 Continue` went out while it was received
        self.woken_for_room = False  # parked while the queue was full, and woken when it had room
        self.held: IncomingRequest | None = None  # its request, read, while it waits first in line again
        self.fast_request: IncomingRequest | None = None  # its request, for a pool thread's fast path

    def close(self, graceful=False):
        if graceful:
            self.worker.linger(self.sock)
        else:
            super().close()


class ThreadWorker(gthread.ThreadWorker):
    """`worker_class` for WORKER_CLASS=gthread (gunicorn.conf.py)."""

    def init_process(self):
        open_files = prepare_to_read(self, self.cfg.threads)
        self.max_keepalived = self.worker_connections - self.cfg.threads
        self._timeout_responses = {stage: self.read_policy.timeout_response(stage) for stage in ("head", "body")}
        self._arriving: dict[Connection, IncomingRequest] = {}
        # (deadline, tie-breaker, connection, its request then): entries go stale when a body's
        # deadline moves on, and are checked when they come up rather than removed.
        self._deadlines: list[tuple[float, int, Connection, IncomingRequest]] = []
        self._tie_breaker = itertools.count()
        self._lingering: set[socket.socket] = set()
        self._linger_order: deque[tuple[float, socket.socket]] = deque()  # LINGER_S is fixed, so in deadline order
        self._stopping_since: float | None = None
        self.log.info(
            "gthread worker: up to %d connections open (open-file limit %d), %d threads, READ_TIMEOUT_S=%g",
            self.worker_connections,
            open_files,
            self.cfg.threads,
            self.read_policy.read_timeout_s,
        )
        super().init_process()

    def load_wsgi(self):
        load_app(self, super().load_wsgi)

    def handle_error(self, req, client, addr, exc):
        answer_in_json(super().handle_error, req, client, addr, exc)

    def run(self):
        self._parking: ParkingLot[Connection] | None = None
        self._early_refusal: EarlyRefusal | None = None
        self._fast_path: FastPath | None = None
        if self.reads_whole:
            from service.web.backpressure import backpressure_for  # in the worker only: it creates metric files
            from service.web.fast_path import FastPath

            self._parking, self._early_refusal = backpressure_for(
                self.wsgi, partial(self.method_queue.defer, self._wake_parked)
            )
            if self._early_refusal is not None:  # the model server's app, whose predict routes it serves
                self._fast_path = FastPath(self.wsgi)
        super().run()

    # Where connections come in: accept, kept-alive or pipelined requests, all call enqueue_req.

    def accept(self, listener):
        """Gunicorn's accept(), making a `Connection`."""
        try:
            client_sock, client_addr = listener.accept()
            self.nr_conns += 1
            client_sock.setblocking(True)
            conn = Connection(self, self.cfg, client_sock, client_addr, listener.getsockname())
            self.enqueue_req(conn)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise

    def enqueue_req(self, conn):
        """Receive the connection's next request in the poller; the pool gets it once it is whole."""
        if not self.reads_whole:
            return super().enqueue_req(conn)
        if conn.parser is not None and self._parking is not None and self.alive and self._parking.must_wait():
            self._parking.park(conn, time.monotonic())  # its next request waits unread (service/web/backpressure.py)
            self._wake_parked()  # the queue may have room, for the connections parked before this one
            return None
        return self._receive(conn)

    def _receive(self, conn: Connection) -> None:
        kept_alive = conn.parser is not None
        leftover = conn.parser.unreader.take_buffered() if kept_alive else b""  # a pipelined request
        incoming = self.read_policy.new_request(time.monotonic(), kept_alive, leftover)
        if incoming.ready:
            return self._submit(conn, incoming)
        conn.sock.setblocking(False)
        self._arriving[conn] = incoming
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        heapq.heappush(self._deadlines, (incoming.deadline, next(self._tie_breaker), conn, incoming))
        if kept_alive:
            self._on_readable(conn)  # the poller said so already
        return None

    def _on_readable(self, conn: Connection, _fileobj=None) -> None:
        incoming = self._arriving.get(conn)
        if incoming is None:
            return
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed (or reset) the connection
            self._forget(conn)
            self.nr_conns -= 1
            conn.close()
            return
        scheduled = incoming.deadline
        incoming.receive(data, time.monotonic())
        if incoming.deadline < scheduled:  # the first byte: the head's deadline replaces the silent allowance
            heapq.heappush(self._deadlines, (incoming.deadline, next(self._tie_breaker), conn, incoming))
        if incoming.needs_continue:
            with contextlib.suppress(OSError):
                conn.sock.send(CONTINUE_RESPONSE)  # 25 bytes into an empty send buffer
            incoming.continued()
        if incoming.ready:
            self._forget(conn)
            self._submit(conn, incoming)

    def _submit(self, conn: Connection, incoming: IncomingRequest) -> None:
        if conn.woken_for_room and self._parking.queue_full():
            conn.held = incoming  # woken with others before they were read: wait first in line, request in hand
            self._parking.park(conn, time.monotonic(), first=True)
            return
        conn.woken_for_room = False
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        if self._refused_early(conn, incoming):
            return
        if self._fast_path is not None:
            conn.fast_request = incoming  # a pool thread answers it, or gives it to the parser (handle)
        else:
            conn.parser.unreader.unread(incoming.take())
        conn.data_ready = True  # Gunicorn's thread then skips its wait for the first bytes
        conn.continue_sent = incoming.continue_sent
        super().enqueue_req(conn)

    def _refused_early(self, conn: Connection, incoming: IncomingRequest) -> bool:
        """Answer 503 unparsed if the full queue refuses the request (service/web/backpressure.py); True if it did."""
        refusal = self._early_refusal.answer(incoming) if self._early_refusal else None
        if refusal is None:
            return False
        answer, rest = refusal
        conn.parser.unreader.unread(rest)
        try:
            sent = conn.sock.send(answer)  # small, into an empty send buffer: the main thread never waits
        except OSError:
            sent = 0
        if sent == len(answer):
            self.enqueue_req(conn)  # kept alive: its next request waits for room, unread
        else:
            self.nr_conns -= 1
            conn.close()
        return True

    def _forget(self, conn: Connection) -> None:
        del self._arriving[conn]
        self.poller.unregister(conn.sock)

    # Deadlines, checked after every turn of the poller.

    def wait_for_and_dispatch_events(self, timeout):
        now = time.monotonic()
        if self._deadlines:
            timeout = min(timeout, self._deadlines[0][0] - now)
        if self._linger_order:
            timeout = min(timeout, self._linger_order[0][0] - now)
        if self._parking is not None:
            overdue_at = self._parking.next_overdue_at(self.read_policy.read_timeout_s)
            for wake_at in (overdue_at, self._parking.next_wake_at()):
                if wake_at is not None:
                    timeout = min(timeout, wake_at - now)
        super().wait_for_and_dispatch_events(max(0.0, timeout))
        self._expire(time.monotonic())

    def _wake_parked(self) -> None:
        for conn in self._parking.wakeable(time.monotonic()):
            self._read_parked(conn, for_room=True)

    def _read_parked(self, conn: Connection, for_room: bool) -> None:
        """Receive a woken connection's request; or submit the one it holds (read, when the queue filled again)."""
        conn.woken_for_room = for_room
        held, conn.held = conn.held, None
        if held is None:
            self._receive(conn)
        else:
            self._submit(conn, held)

    def _expire(self, now: float) -> None:
        if self._parking is not None:
            wake_at = self._parking.next_wake_at()
            if wake_at is not None and wake_at <= now:
                self._wake_parked()
            parked_too_long = self._parking.overdue(now, self.read_policy.read_timeout_s)
            for conn in parked_too_long if self.alive else self._parking.everyone():
                self._read_parked(conn, for_room=False)
        if not self.alive:
            self._stopping_since = self._stopping_since or now
            if now - self._stopping_since >= STOP_IDLE_LINGER_S:
                for conn, incoming in list(self._arriving.items()):
                    if not incoming.started:
                        self._forget(conn)
                        self.nr_conns -= 1
                        conn.close()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, conn, incoming = heapq.heappop(self._deadlines)
            if self._arriving.get(conn) is not incoming:
                continue  # handed over or closed since
            if incoming.deadline > now:
                heapq.heappush(self._deadlines, (incoming.deadline, next(self._tie_breaker), conn, incoming))
                continue
            self._give_up(conn, incoming)
        while self._linger_order and self._linger_order[0][0] <= now:
            _, sock = self._linger_order.popleft()
            if sock in self._lingering:
                self._stop_lingering(sock)

    def _give_up(self, conn: Connection, incoming: IncomingRequest) -> None:
        """The client stalled: 408 if it had started a request (then linger), else close silently."""
        self._forget(conn)
        count_stalled(incoming.stage)
        self.nr_conns -= 1
        if not incoming.started:
            conn.close()
            return
        self.log.debug("answering 408 to %s: it stalled in the request's %s", conn.client, incoming.stage)
        with contextlib.suppress(OSError):
            conn.sock.send(self._timeout_responses[incoming.stage])  # small, into an empty send buffer
        conn.close(graceful=True)

    # Closing without blocking.

    def linger(self, sock: socket.socket) -> None:
        """Close `sock` once the client closes its side or after LINGER_S, reading (and dropping) what comes.

        Closing with unread bytes makes the kernel reset the connection, which can destroy the
        answer before the client reads it (RFC 9112 9.6). A lingering socket still counts as open.
        """
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
            self.poller.register(sock, selectors.EVENT_READ, self._on_lingering_readable)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self.nr_conns += 1
        deadline = time.monotonic() + LINGER_S
        self._lingering.add(sock)
        self._linger_order.append((deadline, sock))

    def _on_lingering_readable(self, sock: socket.socket) -> None:
        try:
            if sock.recv(RECV_BYTES):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._stop_lingering(sock)

    def _stop_lingering(self, sock: socket.socket) -> None:
        self._lingering.remove(sock)
        self.nr_conns -= 1
        with contextlib.suppress(KeyError, ValueError):
            self.poller.unregister(sock)
        util.close(sock)

    # In the pool's threads.

    def handle(self, conn):
        """Gunicorn's handle, after the fast path (service/web/fast_path.py) for a simple predict request."""
        incoming, conn.fast_request = conn.fast_request, None
        if incoming is not None:
            served = self._served_fast(conn, incoming)
            if served is not None:
                return served
            conn.parser.unreader.unread(incoming.take())
        return super().handle(conn)

    def _served_fast(self, conn: Connection, incoming: IncomingRequest) -> bool | None:
        """Whether to keep the connection after answering on the fast path; None if it is not for it."""
        if not self.alive or self.nr + 1 >= self.max_requests or len(self.keepalived_conns) >= self.max_keepalived:
            return None  # answers that say `Connection: close`: Gunicorn writes those
        answer = self._fast_path.answer(incoming, conn.server, conn.client)
        if answer is None:
            return None
        response, rest = answer
        conn.parser.unreader.unread(rest)
        conn.init()
        conn.sock.settimeout(self.read_policy.read_timeout_s)
        try:
            conn.sock.sendall(response)
        except OSError:  # it stopped reading its answer (READ_TIMEOUT_S), or left
            return False
        self.nr += 1
        return True

    def handle_request(self, req, conn):
        """Gunicorn's handle_request, with READ_TIMEOUT_S on the app's reads and writes."""
        if conn.continue_sent:
            req._expected_100_continue = False  # sent already; Gunicorn would send another
        conn.sock.settimeout(self.read_policy.read_timeout_s)
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            self.log.debug(
                "closing a connection from %s: it stopped reading its answer or sending its body", conn.client
            )
            return False

    def _keepalive_after(self, conn, keepalive):
        """Keep the connection only if what the app left of the body has arrived: never wait for a client here."""
        if not (keepalive and self.reads_whole):
            return super()._keepalive_after(conn, keepalive)
        conn.sock.setblocking(False)
        try:
            largest = max(self.read_policy.max_body_bytes, self.read_policy.max_job_body_bytes)
            return bool(conn.parser.finish_body(max_bytes=largest + CHUNKED_READ_AHEAD_BYTES))
        except Exception:  # not here yet (BlockingIOError), or malformed: the next request's start is unknown
            return False
