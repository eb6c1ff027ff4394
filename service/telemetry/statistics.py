"""The Open Inference Protocol's statistics extension (Triton's), per model version, from every worker's metrics.

The counts and durations are those of `model_server_inference_stage_seconds`,
`model_server_pass_stage_seconds`, `model_server_pass_requests` and
`model_server_inference_compute_seconds`, summed over the workers (the multiprocess metrics): so any
worker answers for the whole server, and the figures only grow, as Triton's do. Durations are in
nanoseconds, `last_inference` in milliseconds since the epoch, as Triton sends them.
"""

from __future__ import annotations

from collections import defaultdict

from service.telemetry import metrics

REQUEST_STAGES = ("success", "fail", "queue")  # per request, as observed
PASS_STAGES = ("compute_input", "compute_infer", "compute_output")  # per pass; per request, weighted by its requests


def model_statistics(versions: list[tuple[str, int]]) -> list[dict]:
    """Each (model, version)'s statistics, in the order given; a version that served nothing has zeros."""
    wanted = {(name, str(version)) for name, version in versions}
    per_request: dict = defaultdict(lambda: defaultdict(_duration))
    per_pass: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(_duration)))
    served: dict = defaultdict(int)  # requests served by passes
    last: dict = {}
    for family in metrics.every_worker(scraped=False).collect():
        for sample in family.samples:
            labels = sample.labels
            key = (labels.get("model"), labels.get("version"))
            if key not in wanted:
                continue
            if family.name == metrics.inference_stages._name:
                _add(per_request[key][labels["stage"]], sample.name, sample.value)
            elif family.name == metrics.pass_stages._name:
                _add(per_pass[key][int(labels["batch_size"])][labels["stage"]], sample.name, sample.value)
            elif family.name == metrics.pass_requests._name and sample.name.endswith("_total"):
                served[key] += int(sample.value)
            elif family.name == metrics.inference_compute._name and sample.name.endswith("_total"):
                per_request[key][labels["stage"]]["ns"] += int(sample.value * 1e9)
            elif family.name == metrics.last_inference._name:
                last[key] = max(last.get(key, 0.0), sample.value)
    answer = []
    for name, version in versions:
        key = (name, str(version))
        passes = per_pass[key]
        for stage in PASS_STAGES:
            per_request[key][stage]["count"] = served[key]
        answer.append(
            {
                "name": name,
                "version": str(version),
                "last_inference": int(last.get(key, 0.0) * 1000),
                "inference_count": sum(size * stages["compute_infer"]["count"] for size, stages in passes.items()),
                "execution_count": sum(stages["compute_infer"]["count"] for stages in passes.values()),
                "inference_stats": {stage: per_request[key][stage] for stage in (*REQUEST_STAGES, *PASS_STAGES)},
                "batch_stats": [
                    {"batch_size": size, **{stage: passes[size][stage] for stage in PASS_STAGES}}
                    for size in sorted(passes)
                ],
            }
        )
    return answer


def _duration() -> dict:
    return {"count": 0, "ns": 0}


def _add(duration: dict, sample_name: str, value: float) -> None:
    if sample_name.endswith("_count"):
        duration["count"] += int(value)
    elif sample_name.endswith("_sum"):
        duration["ns"] += int(value * 1e9)
