"""Gunicorn configuration: sized from the machine and the model, never importing TensorFlow."""

from service.sizing import hooks, readiness, rolling
from service.telemetry import logs
from service.threads import yield_cores_to_this_thread
from service.web.workers import WORKER_CLASSES

settings, plan = hooks.configure_master()  # a mistake: one line naming the setting, and exit 1
metrics_dir = hooks.prepare_metrics_dir(settings)  # before anything imports prometheus_client

bind = settings.bind
workers = plan.workers
worker_class = WORKER_CLASSES[settings.worker_class]  # bounds slow clients (service/web/workers.py)
threads = settings.request_threads
worker_connections = settings.gevent_connections
timeout = settings.worker_timeout_s
graceful_timeout = settings.graceful_timeout_s
max_requests = settings.max_requests
max_requests_jitter = settings.max_requests_jitter
keepalive = settings.keepalive_s
loglevel = settings.log_level
logconfig_dict = logs.logging_config(settings)
logger_class = logs.GunicornLogger
preload_app = False  # each worker imports TensorFlow itself, after fork
control_socket_disable = True


def on_starting(server):
    hooks.check_grpc_port(settings)
    rolling.reload_on_hangup(server)  # SIGHUP: settings read again, workers replaced one at a time
    server.log.info(plan.describe(settings), extra={"event": "sizing_plan", "plan": plan.as_dict()})


def pre_fork(server, worker):
    hooks.assign_slot(server, worker)
    hooks.watch_worker(server, worker)


def post_fork(server, worker):
    hooks.place_worker(plan, server, worker)


def post_worker_init(worker):
    yield_cores_to_this_thread(settings.compute_niceness)
    if "model_server" in getattr(worker.wsgi, "extensions", {}):  # not a baseline app of scripts/
        from service.app import serve_grpc  # in the worker: the master never imports the app

        serve_grpc(worker.wsgi)  # after: its threads keep the request threads' priority
    readiness.report_ready(worker)


def worker_exit(server, worker):
    hooks.drain_worker(worker)


def child_exit(server, worker):
    hooks.forget_worker(server, worker)


def on_exit(server):
    hooks.remove_metrics_dir(settings, metrics_dir)
