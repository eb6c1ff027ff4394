"""The names of Gunicorn (pinned at 27.0.1) that this service overrides or calls beyond its documented hooks.

One case per name: an upgrade that renames one, changes its parameters or stops setting it fails
here, saying which of our overrides depends on it and why (docs/architecture.md, "What we take
from Gunicorn"), instead of failing obscurely under load.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import pytest
from gunicorn import arbiter, http, util
from gunicorn.http import parser, unreader
from gunicorn.workers import base, base_async, ggevent, gthread


@dataclass(frozen=True)
class Name:
    owner: object
    name: str
    parameters: tuple[str, ...] | None  # a method's or function's parameters; None for an attribute it sets
    used_by: str

    def __str__(self) -> str:
        return f"{getattr(self.owner, '__name__', self.owner)}.{self.name}"


NAMES = [
    # Both worker classes (service/web/workers.py)
    Name(base.Worker, "load_wsgi", ("self",), "load_app: a worker that cannot load steps aside"),
    Name(base.Worker, "handle_error", ("self", "req", "client", "addr", "exc"), "the parser's errors in JSON"),
    Name(util, "write_nonblock", ("sock", "data", "chunked"), "answer_in_json: how Gunicorn writes its error answer"),
    Name(base.Worker, "notify", ("self",), "the heartbeat kept while a worker pauses before it steps aside"),
    Name(base.Worker, "nr", None, "the fast path counts its requests towards MAX_REQUESTS"),
    Name(http, "get_parser", ("cfg", "source", "source_addr", "http2_connection"), "parsing a request received whole"),
    Name(unreader.Unreader, "take_buffered", ("self",), "a pipelined request's bytes, received before the parser"),
    Name(unreader.Unreader, "unread", ("self", "data"), "a request received whole, handed to the parser"),
    Name(parser.RequestParser, "finish_body", ("self", "deadline", "max_bytes"), "skipping a body the app left unread"),
    # The gthread worker (service/web/gthread_worker.py)
    Name(gthread.TConn, "__init__", ("self", "cfg", "sock", "client", "server"), "a close that lingers in the poller"),
    Name(gthread.TConn, "close", ("self", "graceful"), "a close never blocks the main thread"),
    Name(gthread.TConn, "data_ready", None, "a request received whole: the pool thread skips its wait for bytes"),
    Name(gthread.ThreadWorker, "accept", ("self", "listener"), "accept: connections become Connection objects"),
    Name(gthread.ThreadWorker, "enqueue_req", ("self", "conn"), "a request received whole first"),
    Name(gthread.ThreadWorker, "wait_for_and_dispatch_events", ("self", "timeout"), "deadlines of requests arriving"),
    Name(gthread.ThreadWorker, "handle", ("self", "conn"), "handle: the fast path before Gunicorn's parser"),
    Name(gthread.ThreadWorker, "handle_request", ("self", "req", "conn"), "handle_request: the body limits of jobs"),
    Name(gthread.ThreadWorker, "_keepalive_after", ("self", "conn", "keepalive"), "kept alive once its body is read"),
    Name(gthread.ThreadWorker, "method_queue", None, "backpressure wakes parked connections on the main thread"),
    Name(gthread.ThreadWorker, "poller", None, "requests and lingering closes registered in the worker's poller"),
    Name(gthread.ThreadWorker, "nr_conns", None, "connections counted as Gunicorn counts them"),
    Name(gthread.ThreadWorker, "keepalived_conns", None, "the fast path keeps a connection alive within the limit"),
    Name(gthread.ThreadWorker, "max_keepalived", None, "connections kept alive: every open one, not only those served"),
    # The gevent worker (service/web/gevent_worker.py)
    Name(ggevent.GeventWorker, "handle", ("self", "listener", "client", "addr"), "a request received whole first"),
    Name(base_async.AsyncWorker, "handle_request", ("self", "listener_name", "req", "sock", "addr"), "serving it"),
    # The master (service/sizing/rolling.py): SIGHUP replaces the workers one at a time
    Name(arbiter.Arbiter, "handle_hup", ("self",), "reload_on_hangup: the arbiter's SIGHUP handler is replaced"),
    Name(arbiter.Arbiter, "spawn_worker", ("self",), "roll: one new worker at a time"),
    Name(arbiter.Arbiter, "reap_workers", ("self",), "roll: workers that exit while a new one boots"),
    Name(arbiter.Arbiter, "murder_workers", ("self",), "roll: heartbeats checked while a new one boots"),
    Name(arbiter.Arbiter, "kill_worker", ("self", "pid", "sig"), "roll: stop one once its successor serves"),
    Name(arbiter.Arbiter, "SIG_QUEUE", None, "roll: signals that arrive meanwhile are held, then handled"),
    Name(arbiter.Arbiter, "WORKERS", None, "roll, readiness and slots: the live workers"),
]  # fmt: skip


def source_of(owner) -> str:
    classes = inspect.getmro(owner) if inspect.isclass(owner) else (owner,)
    return "\n".join(inspect.getsource(cls) for cls in classes if cls.__module__.startswith("gunicorn"))


@pytest.mark.parametrize("pinned", NAMES, ids=str)
def test_the_gunicorn_name_we_depend_on_is_still_there_as_we_use_it(pinned):
    why = f"{pinned} changed in this Gunicorn; {pinned.used_by} depends on it (docs/architecture.md)"
    if pinned.parameters is None:
        assert re.search(rf"self\.{pinned.name}\s*=|^\s+{pinned.name}\s*=", source_of(pinned.owner), re.M), why
        return
    found = getattr(pinned.owner, pinned.name, None)
    assert callable(found), why
    assert tuple(inspect.signature(found).parameters) == pinned.parameters, why


def test_the_arbiter_still_finds_a_signals_handler_by_its_name():
    """reload_on_hangup sets `handle_hup` on the arbiter: Gunicorn must look the handler up by name at each signal."""
    assert 'getattr(self, "handle_%s" % signame' in inspect.getsource(arbiter.Arbiter.run), (
        "Gunicorn no longer dispatches signals by name: service/sizing/rolling.py's SIGHUP would be skipped"
    )


def test_gunicorn_writes_its_error_answers_with_a_status_line_first():
    """answer_in_json reads the status from what Gunicorn's `handle_error` writes."""
    written = []

    class Socket:
        def gettimeout(self):
            return 0.0

        def sendall(self, data):
            written.append(data)

    util.write_error(Socket(), 431, "Request Header Fields Too Large", "too many")
    assert written[0].startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
