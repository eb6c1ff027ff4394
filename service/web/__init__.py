"""Connections under Gunicorn: worker classes, request framing, the fast path, backpressure, access log, API keys."""
