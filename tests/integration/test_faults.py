"""Faults on real Gunicorn servers: workers killed, recycled and replaced at SIGHUP while versions on disk break
or vanish, configuration mistakes at start. docs/reliability.md, "Faults", lists what each shows.

The versions are tiny ONNX models (version v answers v x its input), so a worker boots in well under a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import requests

from scripts.launcher import PROJECT_ROOT, free_port
from tests.support import Clients, wait_until, worker_pids

pytestmark = pytest.mark.integration

ONE_ROW = {"instances": [[1.0, 1.0]]}


def first_value(answer: dict) -> float:
    return answer["predictions"][0][0]


def answered(url: str, path: str = "/v1/models/scaler:predict", times: int = 20) -> set:
    """What `times` requests get: the first value of each answer, or the status of each failure."""
    seen = set()
    for _ in range(times):
        answer = requests.post(url + path, json=ONE_ROW, timeout=30)
        seen.add(first_value(answer.json()) if answer.status_code == 200 else answer.status_code)
    return seen


def statuses_since(clients: Clients, before) -> dict:
    return {
        status: count - before.get(status, 0)
        for status, count in clients.statuses.items()
        if count > before.get(status, 0)
    }


@pytest.fixture
def scaler(tmp_path, add_onnx_version):
    """A base path with versions 1 and 2, and a version 3 whose file is cut short (as a copy still under way)."""
    base = tmp_path / "scaler"
    add_onnx_version(base, 1)
    add_onnx_version(base, 2)
    (base / "3").mkdir()
    (base / "3" / "model.onnx").write_bytes(b"\x08\x07cut short")
    return base


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_restarted_workers_serve_past_broken_and_deleted_versions_and_sighup_replaces_them_one_at_a_time(
    worker_class, start_server, scaler, tmp_path, add_onnx_version
):
    settings_file = tmp_path / "settings.env"
    settings_file.write_text("MODEL_VERSION_LABELS=stable=1\n")
    server = start_server(
        MODEL_BASE_PATH=str(scaler), WORKERS="2", WORKER_CLASS=worker_class, MODEL_POLL_S="0.2", GRPC_PORT="0",
        SETTINGS_FILE=str(settings_file),
    )  # fmt: skip
    master = server.process.pid
    status = requests.get(server.url + "/v1/models/scaler/versions/3", timeout=30).json()["model_version_status"][0]
    assert status["state"] == "END" and "INVALID_PROTOBUF" in status["status"]["error_message"]
    assert answered(server.url) == {2.0}  # the start went past the broken newest version

    with Clients(server.url + "/v1/models/scaler:predict", ONE_ROW, read=first_value) as clients:
        # A worker killed: its replacement serves what the other serves (version 2), past broken version 3.
        wait_until(lambda: clients.total() > 50, what="load")
        first, second = sorted(worker_pids(master))
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: server.log().count("version 2 of scaler is available") == 3, what="the replacement serving")
        assert second in worker_pids(master) and len(worker_pids(master)) == 2 and server.process.poll() is None

        # SIGHUP: labels move from the settings file; the workers are replaced one at a time, no request failing.
        before, old_pids = dict(clients.statuses), worker_pids(master)
        settings_file.write_text("MODEL_VERSION_LABELS=stable=2\n")
        os.kill(master, signal.SIGHUP)
        wait_until(lambda: "SIGHUP: 2 of 2 workers replaced" in server.log(), what="the roll")
        wait_until(lambda: not worker_pids(master) & old_pids, what="the old workers leaving")
        assert answered(server.url, "/v1/models/scaler/labels/stable:predict") == {2.0}
        assert statuses_since(clients, before).keys() == {200}

        # A SIGHUP whose settings do not validate changes nothing and stops nothing.
        pids = worker_pids(master)
        settings_file.write_text("MODEL_VERSION_LABELS=stable=2\nMODEL_VERSION_POLICY=newest\n")
        os.kill(master, signal.SIGHUP)
        wait_until(lambda: "SIGHUP changes nothing: " in server.log(), what="the refused SIGHUP")
        assert "MODEL_VERSION_POLICY='newest'" in server.log() and worker_pids(master) == pids
        settings_file.write_text("MODEL_VERSION_LABELS=stable=2\n")

        # The serving version's directory deleted: the workers keep it in memory; a restarted one serves the
        # newest that loads from disk (version 1).
        shutil.rmtree(scaler / "2")
        os.kill(min(worker_pids(master)), signal.SIGKILL)
        wait_until(lambda: "serving version 1, the newest that loads" in server.log(), what="the last good version")
        wait_until(lambda: answered(server.url) == {1.0, 2.0}, what="answers of both versions, on new connections")
        assert server.process.poll() is None

        # Nothing loadable left: a restarted worker says why and steps aside; the master keeps the other.
        shutil.rmtree(scaler / "1")
        os.kill(max(worker_pids(master)), signal.SIGKILL)
        wait_until(lambda: "this worker cannot serve: ModelLoadError" in server.log(), what="the step aside")
        before = dict(clients.statuses)
        wait_until(lambda: clients.total() > sum(before.values()) + 50, what="more answers")
        assert statuses_since(clients, before).keys() == {200} and server.process.poll() is None

        # SIGHUP with nothing loadable: the roll stops at the first new worker; the old ones keep serving.
        os.kill(master, signal.SIGHUP)
        wait_until(lambda: "the roll stops here" in server.log(), what="the roll stopping")
        before = dict(clients.statuses)
        wait_until(lambda: clients.total() > sum(before.values()) + 50, what="more answers")
        assert statuses_since(clients, before).keys() == {200} and server.process.poll() is None

        # A good version published: every worker serves it, the one that stepped aside included.
        add_onnx_version(scaler, 4)
        wait_until(lambda: answered(server.url) == {4.0} and len(worker_pids(master)) == 2, what="version 4")
    failures = {status: count for status, count in clients.statuses.items() if status != 200}
    assert set(failures) <= {"error"} and failures.get("error", 0) <= 3 * 4, failures  # only at the 3 kills
    assert server.process.poll() is None


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_workers_recycled_by_max_requests_serve_past_a_broken_version_then_past_a_deleted_one(
    worker_class, start_server, scaler
):
    server = start_server(
        MODEL_BASE_PATH=str(scaler), WORKERS="2", WORKER_CLASS=worker_class, MODEL_POLL_S="0.2", GRPC_PORT="0",
        MAX_REQUESTS="300", MAX_REQUESTS_JITTER="100",
    )  # fmt: skip
    master = server.process.pid

    def replaced(before: set[int]) -> set[int] | None:
        """The two workers now, once neither is one of `before` (a recycled worker's successor may not be up yet)."""
        now = worker_pids(master)
        return now if len(now) == 2 and not now & before else None

    with Clients(server.url + "/v1/models/scaler:predict", ONE_ROW, read=first_value) as clients:
        started = wait_until(lambda: replaced(set()), what="both workers up")
        recycled = wait_until(lambda: replaced(started), what="both workers recycled")
        assert set(clients.answers) == {2.0}  # every new worker went past broken version 3 to version 2
        shutil.rmtree(scaler / "2")  # the serving version's directory deleted
        wait_until(lambda: replaced(recycled), what="both workers recycled again")
        wait_until(lambda: clients.answers[1.0] > 100, what="answers of version 1, the newest on disk that loads")
    # A recycled worker answers what it accepted: no request lost.
    assert set(clients.statuses) == {200}, clients.statuses
    assert server.log().count("Autorestarting worker") >= 4 and server.process.poll() is None


def test_jobs_running_and_queued_across_a_version_publish_finish_on_the_version_that_replaced_theirs(
    start_server, demo_onnx_path, tmp_path
):
    """Both versions are the demo model as ONNX (the same file: its footprint is known, so version 2 loads in a
    fraction of the time the first job's other parts take, on any machine)."""
    import numpy as np

    base = tmp_path / "digits"
    (base / "1").mkdir(parents=True)
    shutil.copy(demo_onnx_path, base / "1" / "model.onnx")
    server = start_server(MODEL_BASE_PATH=str(base), WORKERS="1", MODEL_POLL_S="0.2", GRPC_PORT="0")
    images = np.random.default_rng(3).random((6_000, 8, 8, 1)).round(2)

    def submit(instances, path="/v1/models/digits/jobs") -> str:
        answer = requests.post(server.url + path, json={"instances": instances.tolist()}, timeout=120)
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    def status(job_id: str) -> dict:
        return requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=30).json()

    with Clients(server.url + "/v1/models/digits:predict", {"instances": images[:1].tolist()}, count=2) as clients:
        running, queued = submit(images), submit(images[:2000])
        pinned = submit(images[:100], "/v1/models/digits/versions/1/jobs")
        part = status(running)["part_instances"]
        wait_until(lambda: status(running)["progress"]["done"] >= part, what="the first job's first part")
        assert status(queued)["state"] == "queued" and status(pinned)["state"] == "queued"
        staging = base / "2.partial"
        staging.mkdir()
        shutil.copy(demo_onnx_path, staging / "model.onnx")
        os.rename(staging, base / "2")  # version 2 published; under `latest`, version 1 retires
        final = ("done", "failed", "cancelled")
        for job_id in (running, queued, pinned):
            wait_until(lambda job_id=job_id: status(job_id)["state"] in final, what=f"job {job_id} ending")
    assert set(clients.statuses) == {200}, clients.statuses
    first, second, third = status(running), status(queued), status(pinned)
    assert first["state"] == "done" and first["version"] == 1, first
    assert first["part_versions"] == sorted(first["part_versions"]) and set(first["part_versions"]) == {1, 2}
    assert second["state"] == "done" and set(second["part_versions"]) == {2}  # queued when version 1 retired
    assert third["state"] == "failed" and "named version 1, and runs on no other" in third["error"], third
    result = requests.get(f"{server.url}/v1/jobs/{running}/result", timeout=120).json()["predictions"]
    sample = list(range(0, 6_000, 599))
    online = requests.post(
        server.url + "/v1/models/digits:predict", json={"instances": images[sample].tolist()}, timeout=60
    ).json()["predictions"]
    assert len(result) == 6_000
    np.testing.assert_allclose(np.array(result)[sample], np.array(online), rtol=1e-6)  # each in its place


@pytest.mark.parametrize("persistent", [False, True], ids=["redis-without-persistence", "redis-append-only"])
def test_jobs_are_as_durable_as_redis_and_its_outage_answers_503_while_predict_goes_on(
    persistent, start_server, tmp_path, add_onnx_version
):
    from prometheus_client.parser import text_string_to_metric_families

    from scripts.local_redis import LocalRedis

    add_onnx_version(tmp_path / "scaler", 1)
    redis_server = LocalRedis(persistent=persistent)
    with redis_server as url:
        server = start_server(
            MODEL_BASE_PATH=str(tmp_path / "scaler"), WORKERS="1", WORKER_CLASS="gevent", GRPC_PORT="0", REDIS_URL=url
        )
        job = requests.post(server.url + "/v1/models/scaler/jobs", json={"instances": [[1.0, 2.0]] * 10}, timeout=30)
        job_url = f"{server.url}/v1/jobs/{job.json()['id']}"
        wait_until(lambda: requests.get(job_url, timeout=30).json()["state"] == "done", what="the job done")
        metrics = text_string_to_metric_families(requests.get(server.url + "/metrics", timeout=30).text)
        [persistence] = [
            family.samples[0].value for family in metrics if family.name == "model_server_jobs_store_persistent"
        ]
        assert persistence == (1 if persistent else 0)
        assert ("accepted jobs may be lost" in server.log()) is not persistent

        redis_server.kill()  # Redis down
        assert answered(server.url) == {1.0}  # predict needs no Redis
        for refused in (
            requests.get(job_url, timeout=30),
            requests.post(server.url + "/v1/models/scaler/jobs", json={"instances": [[1.0, 2.0]]}, timeout=30),
        ):
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", refused.text
            assert "the jobs' store (Redis) cannot be reached" in refused.json()["error"]

        redis_server.start()  # back, with what it kept
        answer = requests.get(job_url, timeout=30)
        if persistent:
            assert answer.status_code == 200 and answer.json()["state"] == "done"
            result = requests.get(job_url + "/result", timeout=30).json()["predictions"]
            assert result == [[1.0, 2.0]] * 10
        else:
            assert answer.status_code == 410 and "was lost" in answer.json()["error"], answer.text


def test_a_configuration_mistake_stops_the_start_with_one_line_naming_the_setting(tmp_path, add_onnx_version):
    import socket

    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "model.onnx").write_bytes(b"junk")
    add_onnx_version(tmp_path / "scaler", 1)
    bad_file = tmp_path / "settings.env"
    bad_file.write_text("MAX_BATCH_SIZE=32\nMAX_QUEUE=lots\n")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases = {
        "MODEL_PATH='/no/such/model.keras' does not exist": {"MODEL_PATH": "/no/such/model.keras"},
        f"MODEL_BASE_PATH='{tmp_path}/empty' has no version directory": {"MODEL_BASE_PATH": str(tmp_path / "empty")},
        f"MODEL_BASE_PATH='{broken}': no version loads: '{broken}/1/model.onnx' cannot be loaded: ModelLoadError": {
            "MODEL_BASE_PATH": str(broken)
        },
        "WORKER_CLASS='sync' is not one of gevent, gthread": {"WORKER_CLASS": "sync"},
        f"{bad_file}, line 2: MAX_QUEUE='lots' is not a valid int": {"SETTINGS_FILE": str(bad_file)},
        f"GRPC_PORT={taken.getsockname()[1]} on 127.0.0.1 cannot be bound": {
            "MODEL_BASE_PATH": str(tmp_path / "scaler"), "GRPC_PORT": str(taken.getsockname()[1])
        },
    }  # fmt: skip
    try:
        for message, environ in cases.items():
            cache = str(tmp_path / "footprints.json")
            env = {**os.environ, "PORT": str(free_port()), "FOOTPRINT_CACHE": cache, **environ}
            done = subprocess.run(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            last_line = done.stderr.strip().splitlines()[-1]
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert last_line.startswith("tf-model-server cannot start: ") and message in last_line
    finally:
        taken.close()
