"""Background jobs under real Gunicorn: gthread with SQLite, gevent with a real Redis; and a kill -9 mid-job."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import requests

from scripts.launcher import LiveServer, free_port
from tests.support import DEMO_SERVER_SETTINGS

pytestmark = pytest.mark.integration

DEADLINE_S = 120


@pytest.fixture(scope="module", params=["gthread-sqlite", "gevent-redis"])
def jobs_server(request, launch_server, demo_model_path, tmp_path_factory):
    worker_class, store = request.param.split("-")
    where = (
        {"REDIS_URL": request.getfixturevalue("redis_url")}
        if store == "redis"
        else {"JOBS_DB": str(tmp_path_factory.mktemp("jobs") / "jobs.sqlite3")}
    )
    server = launch_server(MODEL_PATH=str(demo_model_path), WORKER_CLASS=worker_class, **DEMO_SERVER_SETTINGS, **where)
    yield server
    server.stop()


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 8, 8, 1)).round(2)  # float64: short in JSON


def submit(url: str, instances: np.ndarray, priority: int = 0) -> dict:
    answer = requests.post(
        f"{url}/v1/models/digits/jobs?priority={priority}",
        data=json.dumps({"instances": instances.tolist()}),
        timeout=120,
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert answer.headers["Location"] == f"/v1/jobs/{job['id']}" and job["state"] == "queued"
    return job


def status(url: str, job_id: str) -> dict:
    answer = requests.get(f"{url}/v1/jobs/{job_id}", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_for(url: str, job_id: str, condition, what: str) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job = status(url, job_id)
        if condition(job):
            return job
        time.sleep(0.05)  # polling the job's own status with a deadline
    raise AssertionError(f"job {job_id} never {what}: {job}")


def test_a_job_answers_what_predict_answers_in_order_and_keeps_its_result(jobs_server):
    instances = images(600)
    job = submit(jobs_server.url, instances)
    done = wait_for(jobs_server.url, job["id"], lambda j: j["state"] == "done", "finished")
    assert done["progress"] == {"done": 600, "total": 600}
    assert done["created_at"] <= done["started_at"] <= done["finished_at"] and done["error"] is None
    result = requests.get(f"{jobs_server.url}/v1/jobs/{job['id']}/result", timeout=30)
    assert result.status_code == 200, result.text
    predicted = requests.post(
        f"{jobs_server.url}/predict", data=json.dumps({"instances": instances[:50].tolist()}), timeout=30
    ).json()["predictions"]
    np.testing.assert_allclose(result.json()["predictions"][:50], predicted, rtol=1e-4, atol=1e-6)
    again = requests.get(f"{jobs_server.url}/v1/jobs/{job['id']}/result", timeout=30)
    assert again.json() == result.json(), "reading a result does not delete it"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"instances": []}', b'{"instances": [[1, 2]]}', b'{"instances": [[[["a"]]]]}', b"[]"],
    ids=["bad json", "empty", "wrong shape", "strings", "not an object"],
)
def test_a_malformed_job_gets_predicts_answer_and_is_never_queued(jobs_server, body):
    job = requests.post(f"{jobs_server.url}/v1/models/digits/jobs", data=body, timeout=10)
    predict = requests.post(f"{jobs_server.url}/v1/models/digits:predict", data=body, timeout=10)
    assert job.status_code == predict.status_code == 400
    assert job.json() == predict.json()


def test_cancel_stops_a_running_job_before_its_next_batch(jobs_server):
    job = submit(jobs_server.url, images(30_000, seed=1))
    wait_for(jobs_server.url, job["id"], lambda j: j["progress"]["done"] > 0, "started")
    cancelled = requests.delete(f"{jobs_server.url}/v1/jobs/{job['id']}", timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    # The next job runs once the cancelled one has stopped, on whichever worker is free.
    after = submit(jobs_server.url, images(100, seed=2))
    wait_for(jobs_server.url, after["id"], lambda j: j["state"] == "done", "finished")
    stopped = status(jobs_server.url, job["id"])
    assert stopped["state"] == "cancelled" and stopped["progress"]["done"] < 30_000
    again = requests.delete(f"{jobs_server.url}/v1/jobs/{job['id']}", timeout=10)
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    early = requests.get(f"{jobs_server.url}/v1/jobs/{job['id']}/result", timeout=10)
    assert early.status_code == 409 and "cancelled" in early.json()["error"]


def test_unknown_jobs_and_bad_priorities_are_client_errors(jobs_server):
    assert requests.get(f"{jobs_server.url}/v1/jobs/nope", timeout=10).status_code == 404
    assert requests.get(f"{jobs_server.url}/v1/jobs/nope/result", timeout=10).status_code == 404
    assert requests.delete(f"{jobs_server.url}/v1/jobs/nope", timeout=10).status_code == 404
    bad = requests.post(f"{jobs_server.url}/v1/models/digits/jobs?priority=high", data=b'{"instances": []}', timeout=10)
    assert bad.status_code == 400 and "priority" in bad.json()["error"]
    assert requests.post(f"{jobs_server.url}/v1/models/other/jobs", data=b"{}", timeout=10).status_code == 404


def test_a_job_survives_kill_9_of_the_whole_server(demo_onnx_path, tmp_path):
    """The demo model as ONNX, one worker: what is tested is the jobs' store, not the model."""
    env = {
        **DEMO_SERVER_SETTINGS,
        "WORKERS": "1",
        "MODEL_PATH": str(demo_onnx_path),
        "PORT": str(free_port()),
        "JOBS_DB": str(tmp_path / "jobs.sqlite3"),
        "JOB_LEASE_S": "2",
    }
    instances = images(12_000, seed=7)
    first = LiveServer(env, log_path=tmp_path / "first.log").start()
    try:
        job = submit(first.url, instances)
        running = wait_for(first.url, job["id"], lambda j: j["progress"]["done"] >= 1000, "made progress")
        assert running["state"] == "running" and running["progress"]["done"] < 12_000, running
    finally:
        os.killpg(first.process.pid, signal.SIGKILL)  # the master and every worker, mid-job
        first.process.wait(30)
    second = LiveServer(env, log_path=tmp_path / "second.log").start()
    try:
        done = wait_for(second.url, job["id"], lambda j: j["state"] in ("done", "failed"), "finished")
        assert done["state"] == "done", done
        result = np.array(requests.get(f"{second.url}/v1/jobs/{job['id']}/result", timeout=60).json()["predictions"])
        sample = np.arange(0, 12_000, 240)  # 50 instances across the parts, answered online by the same model
        online = requests.post(
            f"{second.url}/v1/models/digits:predict", json={"instances": instances[sample].tolist()}, timeout=60
        ).json()["predictions"]
    finally:
        second.stop()
    assert result.shape == (12_000, 10)
    np.testing.assert_allclose(result[sample], np.array(online), rtol=1e-6)
