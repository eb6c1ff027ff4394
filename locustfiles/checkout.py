"""Self-checkout workload: each user is a checkout machine that scans a product every 1 to 3 s.

Every scan POSTs one instance to `/predict`. The instance is generated from the served
model's metadata (shape and dtype), so this file works for any model. A response counts
as failed unless it is a 200 with exactly one prediction.

    locust -f locustfiles/checkout.py --headless -u 100 -r 20 -t 60s --host http://127.0.0.1:8000 --csv out/checkout

`--batch-report FILE` writes the mean `X-Batch-Size` the server reported (after the ramp-up
when `--reset-stats` is given) to FILE as JSON at the end of the run.
"""

from __future__ import annotations

import json
import random

from locust import FastHttpUser, between, events, task

from scripts.predict_requests import sample_instance

_instance_cache: dict[str, object] = {}


class BatchSizeReport:
    """The X-Batch-Size of every successful scan, written out at the end of the run."""

    def __init__(self):
        self.sizes: list[int] = []
        self.environment = None

    def write(self, path: str) -> None:
        mean = sum(self.sizes) / len(self.sizes) if self.sizes else 0.0
        with open(path, "w") as stream:
            json.dump({"responses": len(self.sizes), "mean_batch_size": mean}, stream)


report = BatchSizeReport()


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    parser.add_argument("--model-name", default="", help="served model name (default: asked from /readyz)")
    parser.add_argument("--batch-report", default="", help="write the mean X-Batch-Size seen to this JSON file")


@events.init.add_listener
def remember_environment(environment, **_):
    report.environment = environment


@events.spawning_complete.add_listener
def forget_ramp_up(user_count, **_):
    options = report.environment.parsed_options if report.environment else None
    if options is not None and options.reset_stats:  # measure the steady state, as Locust's stats do
        report.sizes.clear()


@events.test_stop.add_listener
def write_batch_report(environment, **_):
    if environment.parsed_options and environment.parsed_options.batch_report:
        report.write(environment.parsed_options.batch_report)


class CheckoutMachine(FastHttpUser):
    wait_time = between(1, 3)

    def on_start(self):
        if "instance" not in _instance_cache:
            name = self.environment.parsed_options.model_name if self.environment.parsed_options else ""
            name = name or self.client.get("/readyz").json()["model"]
            metadata = self.client.get(f"/v1/models/{name}/metadata").json()
            _instance_cache["instance"] = sample_instance(metadata, random.Random(0))
        self.body = json.dumps({"instances": [_instance_cache["instance"]]})

    @task
    def scan_product(self):
        with self.client.post(
            "/predict", data=self.body, headers={"Content-Type": "application/json"}, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            predictions = response.json().get("predictions")
            if not isinstance(predictions, list) or len(predictions) != 1:
                response.failure(f"expected 1 prediction, got {predictions!r:.200}")
                return
            batch_size = response.headers.get("X-Batch-Size")
            if batch_size:
                report.sizes.append(int(batch_size))
            response.success()
