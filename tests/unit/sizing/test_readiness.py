"""Workers telling the master they serve, through a pipe each, with stand-ins for Gunicorn's arbiter and workers."""

from __future__ import annotations

from types import SimpleNamespace

from service.sizing import readiness


def new_worker(server, age: int):
    worker = SimpleNamespace(age=age, pid=1000 + age)
    readiness.watch(worker)
    server.WORKERS[worker.pid] = worker
    return worker


def test_a_worker_is_ready_once_it_has_said_so_with_its_boot_time():
    server = SimpleNamespace(WORKERS={})
    worker = new_worker(server, 1)
    assert not readiness.is_ready(worker)
    readiness.report_ready(worker)
    assert readiness.is_ready(worker) and 0 <= worker.boot_s < 5
    assert readiness.is_ready(worker)  # read once, remembered


def test_workers_that_end_before_serving_are_counted_until_one_serves():
    server = SimpleNamespace(WORKERS={})
    serving = new_worker(server, 1)
    readiness.report_ready(serving)
    for age in (2, 3):
        failed = new_worker(server, age)
        del server.WORKERS[failed.pid]  # reaped
        readiness.forget(server, failed)
    assert readiness.failed_boots_in_a_row(server) == 2  # the one serving came to serve before they failed
    recovered = new_worker(server, 4)
    readiness.report_ready(recovered)
    assert readiness.failed_boots_in_a_row(server) == 0
    del server.WORKERS[serving.pid]
    readiness.forget(server, serving)  # a worker that served and ended is no failed boot
    assert readiness.failed_boots_in_a_row(server) == 0


def test_a_worker_that_cannot_load_says_so_at_once():
    server = SimpleNamespace(WORKERS={})
    worker = new_worker(server, 1)
    assert not readiness.has_failed(worker)
    worker.report_failure()  # what its worker class calls (service/web/workers.py, `load_app`)
    assert readiness.has_failed(worker) and not readiness.is_ready(worker)
