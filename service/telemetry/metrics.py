"""Prometheus metrics of one worker, summed across Gunicorn's workers at scrape time.

A scrape reaches one worker, which cannot see the others' memory. So under Gunicorn every
worker writes its metrics to files in `PROMETHEUS_MULTIPROC_DIR` (set by the master before
anything imports prometheus_client, see hooks.prepare_metrics_dir) and `/metrics` reads
all of them. Outside Gunicorn (tests, scripts) the metrics live in the process.

Names follow Prometheus conventions: base units (`_seconds`), counters end in `_total`,
batch sizes count instances. Gauges say how workers combine: `livesum` adds the live
workers, `liveall` keeps one series per worker (`pid` label).
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
    multiprocess,
)

from service.backends.base import PassTimes
from service.batching.policy import SendReason

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

http_requests = Counter(
    "model_server_http_requests",
    "Requests answered, by protocol (tfserving_rest, v2_rest, tfserving_grpc; http for the service's own routes), "
    "route template (a gRPC call's method), method and HTTP status code (a gRPC call's: docs/protocols.md).",
    ["protocol", "route", "method", "status"],
)
http_request_duration = Histogram(
    "model_server_http_request_duration_seconds",
    "Time from a request reaching the app to its answer being ready, by protocol and route template.",
    ["protocol", "route"],
    buckets=LATENCY_BUCKETS_S,
)
rejected_requests = Counter(
    "model_server_rejected_requests",
    "Predict requests answered without a forward pass, by reason (queue_full, deadline_unreachable, deadline, "
    "shutting_down, not_ready; loading models on demand: loads_rationed, models_busy).",
    ["reason"],
)
queue_wait = Histogram(
    "model_server_batch_queue_wait_seconds",
    "Time a request waited in its worker's queue before its forward pass started.",
    ["model"],
    buckets=LATENCY_BUCKETS_S,
)
forward_pass = Histogram(
    "model_server_forward_pass_seconds",
    "Duration of one forward pass (one batch, padded).",
    ["model"],
    buckets=LATENCY_BUCKETS_S,
)
batch_size = Histogram(
    "model_server_batch_size_instances",
    "Instances in one forward pass, before padding.",
    ["model"],
    buckets=BATCH_SIZE_BUCKETS,
)
batches = Counter(
    "model_server_batches",
    "Forward passes run, by why the batch was sent (full, deadline, nothing_coming, timeout, shutdown; "
    "background: bulk or job instances alone).",
    ["model", "reason"],
)
failed_batches = Counter(
    "model_server_failed_batches", "Forward passes that raised; each of their requests got 500.", ["model"]
)
stalled_connections = Counter(
    "model_server_stalled_connections",
    "Connections closed because the client stopped sending its request (READ_TIMEOUT_S), by what it was sending: "
    "idle (nothing yet; closed silently), head or body (answered 408).",
    ["stage"],
)
queue_depth = Gauge(
    "model_server_queue_depth_instances",
    "Instances accepted and waiting for a forward pass, summed over live workers.",
    ["model"],
    multiprocess_mode="livesum",
)
instances_in_flight = Gauge(
    "model_server_instances_in_flight",
    "Instances accepted and not yet answered (queued or in a forward pass), summed over live workers.",
    ["model"],
    multiprocess_mode="livesum",
)
parked_connections = Gauge(
    "model_server_parked_connections",
    "Kept-alive connections whose next request is left unread until the queue has room (service/web/backpressure.py), "
    "summed over live workers.",
    multiprocess_mode="livesum",
)
jobs_store_persistent = Gauge(
    "model_server_jobs_store_persistent",
    "1 when the jobs' store keeps them across its restart (a SQLite file; Redis with snapshots or its append-only "
    "file), 0 when it does not (a Redis without persistence: accepted jobs may be lost), -1 when Redis does not say.",
    multiprocess_mode="livemin",
)
workers_alive = Gauge(
    "model_server_workers_alive", "Workers that have loaded the model and serve.", multiprocess_mode="livesum"
)
model_info = Gauge(
    "model_server_model_info",
    "1 for each model version a live worker serves; 0 once every worker has released it.",
    ["name", "version"],
    multiprocess_mode="livemax",
)
model_load_duration = Gauge(
    "model_server_model_load_duration_seconds",
    "Time a worker took to load and warm up a model version, one series per live worker and version.",
    ["model", "version"],
    multiprocess_mode="liveall",
)
predictions = Counter(
    "model_server_predictions",
    "Instances answered with predictions (by a forward pass or from the result cache), by model and version.",
    ["model", "version"],
)
on_demand_hits = Counter(
    "model_server_on_demand_hits",
    "With MODEL_MEMORY_MB: requests for a model that was loaded, by model.",
    ["model"],
)
on_demand_loads = Counter(
    "model_server_on_demand_loads",
    "With MODEL_MEMORY_MB: models loaded for a request (each load's requests waited for it), by model.",
    ["model"],
)
on_demand_evictions = Counter(
    "model_server_on_demand_evictions",
    "With MODEL_MEMORY_MB: idle models unloaded, least recently used first, to make room for another, by model.",
    ["model"],
)
models_loaded_bytes = Gauge(
    "model_server_models_loaded_bytes",
    "Measured footprint of the models the live workers hold loaded, against MODEL_MEMORY_MB when it is set.",
    multiprocess_mode="livesum",
)
inference_stages = Summary(
    "model_server_inference_stage_seconds",
    "Inference requests by model, version and stage, as Triton's statistics count them (GET /v2/models/stats): "
    "success and fail (from reaching the app to being answered), and queue (waiting for its pass).",
    ["model", "version", "stage"],
)
pass_stages = Summary(
    "model_server_pass_stage_seconds",
    "Forward passes by model, version, instances (batch_size) and stage (compute_input: inputs merged; "
    "compute_infer: padded, run and trimmed; compute_output: outputs split).",
    ["model", "version", "batch_size", "stage"],
)
pass_requests = Counter(
    "model_server_pass_requests",
    "Requests served by forward passes, by model, version and the passes' instances (batch_size).",
    ["model", "version", "batch_size"],
)
inference_compute = Counter(
    "model_server_inference_compute_seconds",
    "Each pass's stages (model_server_pass_stage_seconds) times the requests it served, by model, version and "
    "stage: with model_server_pass_requests_total, the compute stages of Triton's per-request statistics.",
    ["model", "version", "stage"],
)
last_inference = Gauge(
    "model_server_last_inference_timestamp_seconds",
    "When a worker last answered a request with the model version (Unix time), the latest of all workers.",
    ["model", "version"],
    multiprocess_mode="max",
)
cache_hits = Counter(
    "model_server_cache_hits", "Instances answered from the result cache, by tier (local, redis).", ["tier"]
)
cache_misses = Counter(
    "model_server_cache_misses",
    "Instances the result cache's tier did not hold, by tier; a local miss is then looked up in Redis, if set.",
    ["tier"],
)
cache_evictions = Counter(
    "model_server_cache_evictions", "Answers pushed out of the local tier to make room.", ["tier"]
)
cache_entries = Gauge(
    "model_server_cache_entries",
    "Answers the local tiers of the live workers hold (Redis's own: model_server_cache_redis_keys).",
    ["tier"],
    multiprocess_mode="livesum",
)
cache_bytes = Gauge(
    "model_server_cache_bytes",
    "Bytes the local tiers of the live workers hold (Redis's own: model_server_cache_redis_used_memory_bytes).",
    ["tier"],
    multiprocess_mode="livesum",
)
cache_errors = Counter(
    "model_server_cache_errors", "Redis reads and writes of the result cache that failed (counted as misses).", ["tier"]
)


class BatchMetrics:
    """What one model's batcher reports (service.batching.batcher.BatcherObserver), written to the metrics above."""

    def __init__(self, model_name: str):
        self._model = model_name
        self._queue_depth = queue_depth.labels(model_name)
        self._in_flight = instances_in_flight.labels(model_name)
        self._batch_size = batch_size.labels(model_name)
        self._forward_pass = forward_pass.labels(model_name)
        self._queue_wait = queue_wait.labels(model_name)

    def queue_changed(self, queued_instances: int, in_flight_instances: int) -> None:
        self._queue_depth.set(queued_instances)
        self._in_flight.set(in_flight_instances)

    def batch_ran(
        self, reason: SendReason, instances: int, queue_waits_s: list[float], forward_s: float, failed: bool
    ) -> None:
        batches.labels(self._model, reason.value).inc()
        self._batch_size.observe(instances)
        self._forward_pass.observe(forward_s)
        for wait_s in queue_waits_s:
            self._queue_wait.observe(wait_s)
        if failed:
            failed_batches.labels(self._model).inc()


def worker_serving() -> None:
    """Record that this worker has loaded its model and serves."""
    workers_alive.set(1)


def version_serving(model_name: str, model_version: int, load_duration_s: float) -> None:
    """Record that this worker serves a model version, loaded and warmed up in `load_duration_s`."""
    model_info.labels(model_name, str(model_version)).set(1)
    model_load_duration.labels(model_name, str(model_version)).set(load_duration_s)


def version_released(model_name: str, model_version: int) -> None:
    model_info.labels(model_name, str(model_version)).set(0)


def predicted(model_name: str, model_version: int, instances: int) -> None:
    predictions.labels(model_name, str(model_version)).inc(instances)


def inference_answered(model_name: str, model_version: int, seconds: float, queue_wait_s: float | None) -> None:
    """A request answered with predictions in `seconds`; `queue_wait_s` None when no pass ran for it (the cache)."""
    version = str(model_version)
    inference_stages.labels(model_name, version, "success").observe(seconds)
    if queue_wait_s is not None:
        inference_stages.labels(model_name, version, "queue").observe(queue_wait_s)
    last_inference.labels(model_name, version).set(time.time())


def inference_failed(model_name: str, model_version: int, seconds: float) -> None:
    """A request for the model version answered with an error (refusals and client mistakes included)."""
    inference_stages.labels(model_name, str(model_version), "fail").observe(seconds)


class PassStages:
    """A model version's `ServedModel.observe_pass`: each pass's stages, per pass and per request it served.

    A handful of metric updates per pass whatever its requests: it runs in the batcher's thread.
    """

    STAGES = ("compute_input", "compute_infer", "compute_output")

    def __init__(self, model_name: str, model_version: int):
        self._model, self._version = model_name, str(model_version)
        self._per_request = [inference_compute.labels(self._model, self._version, stage) for stage in self.STAGES]
        self._by_size: dict[int, tuple] = {}  # instances -> (its pass_requests child, its pass_stages children)

    def __call__(self, times: PassTimes) -> None:
        seconds = (times.compute_input_s, times.compute_infer_s, times.compute_output_s)
        by_size = self._by_size.get(times.instances)
        if by_size is None:
            size = str(times.instances)
            by_size = self._by_size[times.instances] = (
                pass_requests.labels(self._model, self._version, size),
                [pass_stages.labels(self._model, self._version, size, stage) for stage in self.STAGES],
            )
        requests, per_pass = by_size
        requests.inc(times.requests)
        for stage_s, pass_stage, request_stage in zip(seconds, per_pass, self._per_request, strict=True):
            pass_stage.observe(stage_s)
            request_stage.inc(times.requests * stage_s)


def cache_looked_up(tier: str, hits: int, misses: int) -> None:
    if hits:
        labelled(cache_hits, tier).inc(hits)
    if misses:
        labelled(cache_misses, tier).inc(misses)


def cache_filled(tier: str, entries: int, size_bytes: int, evicted: int) -> None:
    labelled(cache_entries, tier).set(entries)
    labelled(cache_bytes, tier).set(size_bytes)
    if evicted:
        labelled(cache_evictions, tier).inc(evicted)


_children: dict = {}  # (metric, labels) -> its child: counted on every request, and labels() costs a lock


def labelled(metric, *labels: str):
    """`metric.labels(*labels)`, looked up once."""
    child = _children.get((metric, labels))
    if child is None:
        child = _children[(metric, labels)] = metric.labels(*labels)
    return child


# What Redis reports of itself, read when /metrics is scraped (service/caching/tiers.RedisFigures): name, type, help.
REDIS_FIGURES = (
    ("model_server_cache_redis_keys", "gauge", "Keys in the result cache's Redis database (jobs' keys too)."),
    ("model_server_cache_redis_used_memory_bytes", "gauge", "Memory the result cache's Redis uses."),
    ("model_server_cache_redis_evicted_keys", "counter", "Keys Redis evicted under its maxmemory policy."),
)

_scrape_collectors: list = []  # read at each scrape by the worker scraped (the Redis tier's figures)


def add_scrape_collector(collector) -> None:
    """Have `collector` (prometheus_client's custom collector) read at every scrape of this process."""
    _scrape_collectors.append(collector)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        REGISTRY.register(collector)


def metrics_table() -> str:
    """docs/operations.md's table of metrics, from the declarations above: `python -m service.telemetry.metrics`."""
    rows = ["| Metric | Type | What it counts |", "|---|---|---|"]
    for metric in _declared():
        kind = type(metric).__name__.lower()
        name = metric._name + ("_total" if kind == "counter" else "")
        labels = "{" + ",".join(metric._labelnames) + "}" if metric._labelnames else ""
        rows.append(f"| `{name}{labels}` | {kind} | {metric._documentation} |")
    for name, kind, documentation in REDIS_FIGURES:
        rows.append(f"| `{name}{'_total' if kind == 'counter' else ''}` | {kind}, read at scrape | {documentation} |")
    return "\n".join(rows)


def _declared() -> list:
    return [value for value in globals().values() if isinstance(value, (Counter, Gauge, Histogram, Summary))]


def every_worker(scraped: bool = True) -> CollectorRegistry:
    """The metrics of every worker: read from their files under Gunicorn, this process's outside it.

    `scraped`: with the figures read at each scrape (the Redis tier's).
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    for collector in _scrape_collectors if scraped else ():
        registry.register(collector)
    return registry


def exposition() -> tuple[bytes, str]:
    """The metrics of every worker in Prometheus' text format, and its content type."""
    return generate_latest(every_worker()), CONTENT_TYPE_LATEST


if __name__ == "__main__":
    print(metrics_table())


def jobs_store_durability(durability) -> None:
    """The jobs' store's durability (service/jobs/stores.py, `Durability`) as `model_server_jobs_store_persistent`."""
    jobs_store_persistent.set({True: 1, False: 0, None: -1}[durability.persistent])
