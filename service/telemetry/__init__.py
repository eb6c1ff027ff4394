"""Telemetry: the Prometheus metrics of every worker, the logs, and the summary of refusals."""
