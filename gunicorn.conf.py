"""Gunicorn configuration: sized from the machine and the model, never importing TensorFlow."""

from service import hooks
from service.settings import load_settings

settings = load_settings()
plan = hooks.plan_for_this_machine(settings)

bind = settings.bind
workers = plan.workers
worker_class = settings.worker_class
threads = settings.request_threads
worker_connections = settings.gevent_connections
timeout = settings.worker_timeout_s
graceful_timeout = settings.graceful_timeout_s
keepalive = settings.keepalive_s
loglevel = settings.log_level
preload_app = False  # each worker imports TensorFlow itself, after fork
control_socket_disable = True


def on_starting(server):
    server.log.info(plan.describe(settings))


def pre_fork(server, worker):
    hooks.assign_slot(server, worker)


def post_fork(server, worker):
    hooks.place_worker(plan, worker)


def worker_exit(server, worker):
    hooks.drain_worker(worker)
