"""Logging configuration: JSON or text lines on stderr or in a rotated file, with the request id.

Each case runs in a child process, since logging is configured once per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from scripts.launcher import PROJECT_ROOT

EMIT = """
import logging, logging.config, sys
from service.telemetry import logs
from service.settings import load_settings
logging.config.dictConfig(logs.logging_config(load_settings(dict(a.split("=", 1) for a in sys.argv[1:]))))
logging.getLogger("service.app").info("outside a request")
token = logs.request_id_var.set("req-7")
logging.getLogger("model_server.access").info("POST /predict 200", extra={"status": 200, "batch_size": 4})
logs.request_id_var.reset(token)
logging.getLogger("gunicorn.error").warning("from gunicorn")
logging.getLogger("service.app").debug("hidden at info")
"""


def emit(*settings: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", EMIT, *settings], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    return done.stderr


def test_json_format_writes_one_object_a_line_with_the_request_id():
    lines = emit("LOG_FORMAT=json").splitlines()
    events = [json.loads(line) for line in lines]
    assert [event["message"] for event in events] == ["outside a request", "POST /predict 200", "from gunicorn"]
    outside, access, gunicorn = events
    assert outside["request_id"] is None and outside["level"] == "INFO" and outside["logger"] == "service.app"
    assert access["request_id"] == "req-7" and access["status"] == 200 and access["batch_size"] == 4
    assert gunicorn["level"] == "WARNING" and gunicorn["logger"] == "gunicorn.error"
    assert all("time" in event and isinstance(event["pid"], int) for event in events)


def test_text_format_is_one_readable_line_per_event():
    lines = emit("LOG_FORMAT=text").splitlines()
    assert len(lines) == 3
    assert "INFO model_server.access [req-7] POST /predict 200" in lines[1]


def test_log_level_filters():
    assert "hidden at info" in emit("LOG_LEVEL=debug")
    assert "outside a request" not in emit("LOG_LEVEL=warning")


def test_log_file_rotates_at_midnight_and_keeps_a_week(tmp_path):
    log_file = tmp_path / "server.log"
    assert emit(f"LOG_FILE={log_file}", "LOG_FORMAT=json") == ""
    assert [json.loads(line)["message"] for line in log_file.read_text().splitlines()][-1] == "from gunicorn"
    check = textwrap.dedent(f"""
        import logging, logging.config
        from service.telemetry import logs
        from service.settings import load_settings
        logging.config.dictConfig(logs.logging_config(load_settings({{"LOG_FILE": "{log_file}"}})))
        handler = logging.getLogger().handlers[0]
        print(type(handler).__name__, handler.when, handler.backupCount)
        handler.doRollover()
        logging.getLogger("x").warning("after rollover")
    """)
    done = subprocess.run([sys.executable, "-c", check], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["ConcurrentTimedRotatingFileHandler", "MIDNIGHT", "7"]
    rotated = [path for path in tmp_path.iterdir() if path.name.startswith("server.log.")]
    assert len(rotated) == 1 and "from gunicorn" in rotated[0].read_text()
    assert "after rollover" in log_file.read_text() and "from gunicorn" not in log_file.read_text()
