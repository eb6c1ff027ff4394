"""Backpressure for retry-at-once clients: requests wait unread, or are refused cheaply, while the queue takes none.

A client that ignores Retry-After and retries at once (wrk, a naive retry loop) sends its
next request on the same connection as soon as it has the 503. Read, parsed and refused,
each such retry takes CPU from the forward passes the queue waits for, and the client
retries faster the cheaper the refusal: goodput collapses (docs/reliability.md, "Overload"). TCP
has the remedy: a request that is not read waits in the client's socket and costs the server
nothing. So while the worker's queue admits nothing (it is full or, with REQUEST_TIMEOUT_MS or
LATENCY_SLO_MS, a request would be answered too late: `Batcher.admits`), a kept-alive
connection ready to send its next request is parked instead of read, and parked connections
are woken first parked, first woken, as many as the queue admits, whenever a batch leaves it
or a pass ends. A new connection's first request is always read at once (and refused in about
a millisecond if the queue admits nothing); a parked connection is read after READ_TIMEOUT_S
at the latest, and at once when the worker stops.

A request that is read while the queue admits nothing is refused before Gunicorn parses it:
from its request line and its `X-Request-Timeout-Ms` alone (`EarlyRefusal`), for the predict
route's own reason and with the same answer, so a refusal costs a third of what it did and a
tenth of a served request (docs/reliability.md, "Overload").

This module holds the rules; each worker class parks and wakes connections in its own way
(a greenlet's event, a socket left out of the poller), and imports it only in the worker: the
metrics it counts in would give the Gunicorn master metric files of its own.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Generic, TypeVar

from service.batching.admission import DeadlineUnreachable
from service.batching.requests import QueueFull
from service.errors import ApiError, ServiceUnavailable, render
from service.pipeline.answers import refused
from service.pipeline.inference import InferenceTarget, admission_budget_s, request_timeout_s
from service.protocols import match_inference
from service.telemetry import metrics
from service.web.access import count_request, request_id_for
from service.web.workers import IncomingRequest, kept_alive_response

Parked = TypeVar("Parked")


def model_server_of(wsgi_app: Any):
    """The ModelServer behind the app Gunicorn loaded (service.app.create_app), None for any other app."""
    return getattr(wsgi_app, "extensions", {}).get("model_server")


def backpressure_for(
    wsgi_app: Any, wake_parked_soon: Callable[[], None]
) -> tuple[ParkingLot | None, EarlyRefusal | None]:
    """A worker's parking lot and early refusal for the app it serves (neither for another app; no parking lot
    for several models).

    `wake_parked_soon` is called from a batcher thread each time a batch leaves the queue: it
    must only schedule the worker's own wake-up of parked connections in its loop.
    """
    server = model_server_of(wsgi_app)
    if server is None:
        return None, None
    if server.sole is None:  # several models: which one a request is for is known only once it is read
        return None, EarlyRefusal(server)
    server.sole.batcher.add_room_listener(wake_parked_soon)
    return ParkingLot(server.sole.batcher), EarlyRefusal(server)


class EarlyRefusal:
    """The whole 503 answer to a predict request that the queue refuses now, from its bytes, before any parsing."""

    def __init__(self, server: Any):
        self._server = server

    def answer(self, incoming: IncomingRequest) -> tuple[bytes, bytes] | None:
        """The answer's bytes and what followed the request (a pipelined next one), or None to serve it as usual.

        `incoming` must be ready; when it is answered here, its bytes are taken. Costs nothing
        while the queue admits more: every request a worker serves passes here first.
        """
        framing = incoming.framing
        if framing.request_line is None or all(model.batcher.admits > 0 for model in self._server.models.values()):
            return None
        timeout = framing.request_timeout_ms.decode("latin-1") if framing.request_timeout_ms is not None else None
        method, target = framing.method.decode("latin-1"), framing.target.decode("latin-1")
        refusal = refusal_before_reading(self._server, method, target, timeout)
        if refusal is None:
            return None
        target, error = refusal
        status, body, error_headers = render(error)
        request_id = request_id_for(framing.request_id.decode("latin-1"))
        headers = [("Content-Type", "application/json"), *error_headers.items(), ("X-Request-ID", request_id)]
        answer = kept_alive_response(f"{status} {HTTPStatus(status).phrase}", headers, body)
        count_request(target.protocol, target.route, "POST", status, time.monotonic() - incoming.received_at)
        return answer, incoming.take()[framing.request_end :]


def refusal_before_reading(
    server: Any, method: str, path: str, timeout_header: str | None = None
) -> tuple[InferenceTarget, ServiceUnavailable] | None:
    """(what it names, 503) for an inference request refused by a full queue or an unreachable deadline, else None.

    Judged from its request line and its `X-Request-Timeout-Ms` (`timeout_header`), before
    Gunicorn parses the request: only what the protocol's endpoint would refuse before reading
    the body, and only when nothing else could answer first (API keys, an unknown model, a
    malformed timeout).
    """
    target = match_inference(path)
    if method != "POST" or target is None or not server.ready or server.settings.api_keys:
        return None
    try:
        hosted = server.hosted(target.model_name)
        hosted.versions.serving(target.version, target.label)
        timeout_s = request_timeout_s(hosted.settings, timeout_header)
        hosted.batcher.check_room(1, admission_budget_s(hosted.settings, timeout_s))
    except ApiError:
        return None
    except (QueueFull, DeadlineUnreachable) as error:
        return target, refused(server, error)
    return None


class ParkingLot(Generic[Parked]):
    """Connections waiting for room in the queue before their next request is read; first parked, first woken.

    Single-threaded: used only from the worker's own loop (the gevent hub, the gthread main thread).
    """

    def __init__(self, batcher: Any):
        self._batcher = batcher
        self._parked: deque[tuple[float, Parked]] = deque()  # (parked at, connection), oldest first
        # Room promised to woken connections: counted in accepted requests, until the queue has accepted
        # that many or a full pass has gone by since the last wake-up (a woken client may send no request).
        self._promised_until = 0
        self._promised_at = -math.inf

    def __len__(self) -> int:
        return len(self._parked)

    def must_wait(self) -> bool:
        """Whether a connection about to be read must park: the queue admits nothing, or others wait before it."""
        return bool(self._parked) or self._batcher.admits <= 0

    def park(self, connection: Parked, now: float, first: bool = False) -> None:
        """Park a connection last in line, or `first` (one woken whose request, read, found the queue full again)."""
        if first:  # kept in order of parking time, so the overdue come first: it counts as parked no later
            self._parked.appendleft((min(now, self._parked[0][0]) if self._parked else now, connection))
        else:
            self._parked.append((now, connection))
        metrics.parked_connections.inc()

    def leave(self, connection: Parked) -> None:
        """Forget a parked connection that stopped waiting on its own (it timed out or closed)."""
        for entry in self._parked:
            if entry[1] is connection:
                self._parked.remove(entry)
                metrics.parked_connections.dec()
                return

    def wakeable(self, now: float) -> list[Parked]:
        """Take the oldest connections, as many as the queue admits (one instance each at least).

        Room promised to connections woken earlier whose requests the queue has not accepted
        yet counts as taken, so wake-ups that come before the woken are read (a batch leaving
        from each batcher thread, requests waiting for a gthread) do not wake too many. If
        some are woken too many anyway, one whose request then finds the queue full parks
        again at the front, its request in hand, rather than being refused after its wait.
        """
        accepted = self._batcher.accepted_requests
        if now - self._promised_at >= self._batcher.full_pass_seconds():
            self._promised_until = accepted
        promised = max(0, self._promised_until - accepted)
        count = min(len(self._parked), max(0, self._batcher.admits - promised))
        if count:
            self._promised_until = max(self._promised_until, accepted) + count
            self._promised_at = now
        return self._take(count)

    def next_wake_at(self) -> float | None:
        """When room promised to woken connections lapses while others wait: wake again then (`wakeable`).

        A woken connection whose request is refused, or that sends none, never takes its room; if
        nothing else happens (no batch leaves, no pass ends: the queue is empty), only this brings
        the next parked connections in.
        """
        if not self._parked or self._promised_until <= self._batcher.accepted_requests:
            return None
        return self._promised_at + self._batcher.full_pass_seconds()

    def queue_full(self) -> bool:
        """Whether the queue admits nothing more now (full, or the default budget would be missed)."""
        return self._batcher.admits <= 0

    def overdue(self, now: float, patience_s: float) -> list[Parked]:
        """Take the connections parked for `patience_s` or longer."""
        count = 0
        for parked_at, _ in self._parked:
            if now - parked_at < patience_s:
                break
            count += 1
        return self._take(count)

    def everyone(self) -> list[Parked]:
        return self._take(len(self._parked))

    def next_overdue_at(self, patience_s: float) -> float | None:
        return self._parked[0][0] + patience_s if self._parked else None

    def _take(self, count: int) -> list[Parked]:
        taken = [self._parked.popleft()[1] for _ in range(count)]
        if taken:
            metrics.parked_connections.dec(len(taken))
        return taken
