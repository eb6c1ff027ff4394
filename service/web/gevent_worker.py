"""Gunicorn's gevent worker, receiving each request whole and on a deadline before serving it.

The rules are in service/web/workers.py. Here every open connection has a greenlet, which is
cheap: Gunicorn's pool is sized for every connection the worker keeps open
(`open_connection_cap`), and WORKER_CONNECTIONS instead bounds the requests being served at
once (a semaphore taken once a request has fully arrived). So connections that stall while
sending cannot take the places of requests that have arrived.
"""

from __future__ import annotations

import errno
import time
from functools import partial
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from gunicorn import http, util
from gunicorn.workers import ggevent

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


class GeventWorker(ggevent.GeventWorker):
    """`worker_class` for WORKER_CLASS=gevent (gunicorn.conf.py)."""

    def init_process(self):
        open_files = prepare_to_read(self, self.cfg.worker_connections)
        self.log.info(
            "gevent worker: up to %d connections open (open-file limit %d), %d requests served at once, "
            "READ_TIMEOUT_S=%g",
            self.worker_connections,
            open_files,
            self.cfg.worker_connections,
            self.read_policy.read_timeout_s,
        )
        super().init_process()

    def load_wsgi(self):
        load_app(self, super().load_wsgi)

    def handle_error(self, req, client, addr, exc):
        answer_in_json(super().handle_error, req, client, addr, exc)

    def run(self):
        self._serving = BoundedSemaphore(self.cfg.worker_connections)  # after gevent's hub is set up
        self._silent: set[gevent.Greenlet] = set()  # handlers waiting for a request's first byte
        self._stopping_since: float | None = None
        self._parking: ParkingLot[Event] | None = None
        self._early_refusal: EarlyRefusal | None = None
        self._wake_timer: gevent.Greenlet | None = None
        self._fast_path: FastPath | None = None
        if self.reads_whole:
            from service.web.backpressure import backpressure_for  # in the worker only: it creates metric files
            from service.web.fast_path import FastPath

            wake_soon = partial(gevent.get_hub().loop.run_callback_threadsafe, self._wake_parked)
            self._parking, self._early_refusal = backpressure_for(self.wsgi, wake_soon)
            if self._early_refusal is not None:  # the model server's app, whose predict routes it serves
                self._fast_path = FastPath(self.wsgi)
        super().run()

    def notify(self):
        """Gunicorn's heartbeat (every second, also while stopping); a stopping worker ends silent connections."""
        super().notify()
        if self.alive:
            return
        self._stopping_since = self._stopping_since or time.monotonic()
        if self._parking is not None:
            for woken in self._parking.everyone():
                woken.set()
        if time.monotonic() - self._stopping_since >= STOP_IDLE_LINGER_S:
            for handler in list(self._silent):
                handler.kill(block=False)

    def handle(self, listener, client, addr):
        """Serve one connection: receive a request whole, serve it, repeat while it is kept alive."""
        if not self.reads_whole:
            return super().handle(listener, client, addr)
        request = None
        answered = False  # whether anything was sent, so closing waits for the client's FIN
        try:
            listener_name = listener.getsockname()
            parser = http.get_parser(self.cfg, client, addr)
            kept_alive = False
            while True:
                if kept_alive:
                    gevent.sleep(0)  # let the rest of the last request's batch answer before this connection reads
                woken = kept_alive and self._wait_for_room()
                incoming = self.read_policy.new_request(time.monotonic(), kept_alive, parser.unreader.take_buffered())
                if not self._receive(client, incoming):
                    answered = incoming.started
                    return
                while woken and self._parking.queue_full():
                    woken = self._wait_for_room(first=True)  # read, and the queue filled again: wait first in line
                if self._refused_early(client, parser, incoming) or self._served_fast(
                    client, parser, incoming, listener_name, addr
                ):
                    answered = kept_alive = True
                    continue
                parser.unreader.unread(incoming.take())
                answered = True
                request = next(parser)  # parses bytes already received: the head is complete
                if incoming.continue_sent:
                    request._expected_100_continue = False  # sent already; Gunicorn would send another
                with self._serving:
                    self.handle_request(listener_name, request, client, addr)  # StopIteration: close
                if not self._skip_unread_body(parser):
                    return
                kept_alive = True
        except (StopIteration, http.errors.NoMoreData):
            pass
        except TimeoutError:
            self.log.debug("closing a connection from %s: it stopped reading its answer or sending its body", addr)
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as error:
            self.handle_error(request, client, addr, error)
        finally:
            if answered:
                util.close_graceful(client, timeout=LINGER_S)
            util.close(client)

    def _wait_for_room(self, first: bool = False) -> bool:
        """Leave the next request unread while the queue is full (web/backpressure.py); True if woken for room."""
        parking = self._parking
        if parking is None or not self.alive or not (first or parking.must_wait()):
            return False
        woken = Event()
        parking.park(woken, time.monotonic(), first)
        self._wake_parked()  # the queue may have room, for the connections parked before this one
        try:
            return woken.wait(timeout=self.read_policy.read_timeout_s) and self.alive
        finally:
            if not woken.is_set():
                parking.leave(woken)

    def _refused_early(self, client, parser, incoming: IncomingRequest) -> bool:
        """Answer 503 unparsed if the full queue refuses the request (service/web/backpressure.py); True if it did."""
        refusal = self._early_refusal.answer(incoming) if self._early_refusal else None
        if refusal is None:
            return False
        answer, rest = refusal
        parser.unreader.unread(rest)
        client.sendall(answer)
        return True

    def _served_fast(self, client, parser, incoming: IncomingRequest, listener_name, addr) -> bool:
        """Serve a simple predict request without Gunicorn's parser (service/web/fast_path.py); True if it did."""
        if self._fast_path is None or not self.alive or self.nr + 1 >= self.max_requests:
            return False  # a stopping worker's last answers say `Connection: close`: Gunicorn writes those
        with self._serving:
            answer = self._fast_path.answer(incoming, listener_name, addr)
            if answer is None:
                return False
            response, rest = answer
            parser.unreader.unread(rest)
            client.sendall(response)
        self.nr += 1
        return True

    def _wake_parked(self) -> None:
        now = time.monotonic()
        for woken in self._parking.wakeable(now):
            woken.set()
        wake_at = self._parking.next_wake_at()
        if wake_at is not None and self._wake_timer is None:
            self._wake_timer = gevent.spawn_later(max(0.0, wake_at - now), self._wake_on_time)

    def _wake_on_time(self) -> None:
        self._wake_timer = None
        self._wake_parked()

    def _skip_unread_body(self, parser) -> bool:
        """Discard what the app left of the body if it comes soon; False: close, the next request's start is unknown."""
        try:
            return parser.finish_body(deadline=time.monotonic() + min(LINGER_S, self.read_policy.read_timeout_s))
        except Exception:  # a malformed chunk, for example
            return False

    def _receive(self, client, incoming: IncomingRequest) -> bool:
        """Read until the request is ready (True), or the client closes or stalls (False; 408 sent if due)."""
        while not incoming.ready:
            wait_s = incoming.deadline - time.monotonic()
            if wait_s <= 0:
                count_stalled(incoming.stage)
                if incoming.started:
                    self.log.debug("answering 408 to %s: it stalled in the request's %s", client, incoming.stage)
                    client.settimeout(LINGER_S)
                    client.sendall(self.read_policy.timeout_response(incoming.stage))
                return False
            client.settimeout(wait_s)
            handler = None if incoming.started else gevent.getcurrent()
            if handler is not None:
                self._silent.add(handler)
            try:
                data = client.recv(RECV_BYTES)
            except TimeoutError:
                continue
            finally:
                self._silent.discard(handler)
            if not data:
                return False
            incoming.receive(data, time.monotonic())
            if incoming.needs_continue:
                client.sendall(CONTINUE_RESPONSE)
                incoming.continued()
        # The app's reads (only a fallback: the request is here) and writes get the same bound.
        client.settimeout(self.read_policy.read_timeout_s)
        return True
