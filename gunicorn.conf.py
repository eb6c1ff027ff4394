"""Gunicorn configuration: sized from the machine and the model, never importing TensorFlow."""

from service.operations import logs
from service.settings import load_settings
from service.sizing import hooks
from service.threads import yield_cores_to_this_thread
from service.web.workers import WORKER_CLASSES

settings = load_settings()
metrics_dir = hooks.prepare_metrics_dir(settings)  # before anything imports prometheus_client
plan = hooks.plan_for_this_machine(settings)

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
    server.log.info(plan.describe(settings), extra={"event": "sizing_plan", "plan": plan.as_dict()})


def pre_fork(server, worker):
    hooks.assign_slot(server, worker)


def post_fork(server, worker):
    hooks.place_worker(plan, worker)


def post_worker_init(worker):
    yield_cores_to_this_thread(settings.compute_niceness)
    hooks.start_grpc(settings, worker)  # after: its threads keep the request threads' priority


def worker_exit(server, worker):
    hooks.drain_worker(worker)


def child_exit(server, worker):
    hooks.forget_worker_metrics(worker)


def on_exit(server):
    hooks.remove_metrics_dir(settings, metrics_dir)
