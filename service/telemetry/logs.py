"""Logging of the master and the workers, configured once from LOG_FORMAT, LOG_LEVEL and LOG_FILE.

Gunicorn applies `logging_config()` in the master (its `logconfig_dict`) before forking, so
the workers inherit it; the app applies it itself only when nothing has configured logging
(tests, scripts). `json` writes one object a line, for log collectors; `text` is for
people. Every line carries the id of the request it was written for, if any.
"""

from __future__ import annotations

import contextvars
import logging

from gunicorn.glogging import Logger

from service.settings import Settings

# The id of the request being served by this thread or greenlet (gevent gives each greenlet its own context).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(process)d %(request_id)s %(message)s"
ROTATED_FILES_KEPT = 7  # LOG_FILE rotates at midnight and keeps a week

# Every request logs an access event, so records skip what no format here prints: the
# caller's file and line, and the thread (under gevent, a lookup per greenlet).
logging.logThreads = False
logging.logMultiprocessing = False
logging._srcfile = None


class GunicornLogger(Logger):
    """Gunicorn's logger without its own access log: the app writes a richer one (access.py)."""

    def access(self, resp, req, environ, request_time) -> None:
        pass


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (None outside a request) to every record a handler formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def logging_config(settings: Settings) -> dict:
    """A `logging.config.dictConfig` for the whole process, Gunicorn's own loggers included."""
    if settings.log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
            "timestamp": "time",
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    if settings.log_file:
        # Several processes write the file: this handler locks it around each write and each rotation.
        handler = {
            "class": "concurrent_log_handler.ConcurrentTimedRotatingFileHandler",
            "filename": settings.log_file,
            "when": "midnight",
            "backupCount": ROTATED_FILES_KEPT,
        }
    else:
        handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"main": formatter},
        "handlers": {"main": {**handler, "formatter": "main", "filters": ["request_id"]}},
        "root": {"level": level, "handlers": ["main"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": level, "handlers": [], "propagate": True},
        },
    }
