"""The jobs' service over real stores: a store that cannot be reached, a store emptied behind its back, durability."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from scripts.local_redis import LocalRedis, free_port
from service.batching.batcher import Batcher
from service.batching.policy import FixedTimeout
from service.errors import Gone, NotFound, ServiceUnavailable
from service.jobs.service import build_jobs
from service.settings import Settings
from tests.support import one_model

INPUTS = {"x": np.ones((3, 2), np.float32)}


def forward(arrays_list):
    return [{"y": arrays["x"] * 2} for arrays in arrays_list]


@pytest.fixture
def batcher():
    batcher = Batcher(forward, FixedTimeout(0), max_batch_size=4, max_queue=16, concurrent_batches=1)
    yield batcher
    batcher.close(10)


@pytest.mark.parametrize("persistent", [False, True])
def test_a_job_lost_with_a_restarted_redis_is_told_apart_from_one_that_never_existed(batcher, persistent):
    server = LocalRedis(persistent=persistent)
    with server as url:
        jobs = build_jobs(Settings(model_name="m", redis_url=url), one_model(batcher))
        job = jobs.submit("m", 1, "row", INPUTS, 3, priority=0)
        assert jobs.get(job.id) == job
        never_made = f"{job.id.partition('-')[0]}-{'0' * 32}"  # the same store's generation
        with pytest.raises(NotFound, match="never existed"):
            jobs.get(never_made)
        server.restart()  # killed, as a crash would, and started again
        if persistent:
            assert jobs.get(job.id) == job  # its append-only file kept it
        else:
            with pytest.raises(
                Gone, match=r"was lost: its store, Redis without persistence.*, was emptied after .*submit it again"
            ):
                jobs.get(job.id)
            with pytest.raises(NotFound, match="never existed"):
                jobs.get("a-job-id-of-no-generation")


def test_a_replaced_jobs_file_is_told_apart_too(batcher, tmp_path):
    settings = Settings(model_name="m", jobs_db=str(tmp_path / "jobs.sqlite3"))
    job = build_jobs(settings, one_model(batcher)).submit("m", 1, "row", INPUTS, 3, priority=0)
    for path in tmp_path.glob("jobs.sqlite3*"):
        path.unlink()  # an emptyDir of a restarted pod
    with pytest.raises(Gone, match="was lost"):
        build_jobs(settings, one_model(batcher)).get(job.id)


def test_while_redis_is_unreachable_every_job_operation_is_refused_with_retry_after(batcher):
    jobs = build_jobs(Settings(model_name="m", redis_url=f"redis://127.0.0.1:{free_port()}/0"), one_model(batcher))
    operations = {
        "submit": lambda: jobs.submit("m", 1, "row", INPUTS, 3, priority=0),
        "get": lambda: jobs.get("abc-def"),
        "result": lambda: jobs.result("abc-def"),
        "cancel": lambda: jobs.cancel("abc-def"),
    }
    for name, operation in operations.items():
        with pytest.raises(ServiceUnavailable, match=r"the jobs' store \(Redis\) cannot be reached") as refused:
            operation()
        assert refused.value.headers["Retry-After"] == "1", name


@pytest.mark.parametrize("persistent", [False, True])
def test_the_runner_says_how_durable_redis_is_and_warns_when_it_keeps_nothing(batcher, persistent, caplog):
    told = []
    with LocalRedis(persistent=persistent) as url:
        jobs = build_jobs(Settings(model_name="m", redis_url=url), one_model(batcher), on_durability=told.append)
        with caplog.at_level(logging.INFO, logger="service.jobs.runner"):
            jobs.runner.check_durability()
            jobs.runner.check_durability()  # unchanged: told once
    assert [durability.persistent for durability in told] == [persistent]
    [record] = [r for r in caplog.records if "jobs are kept" in r.getMessage()]
    if persistent:
        assert record.levelno == logging.INFO and "append-only file" in record.getMessage()
    else:
        assert record.levelno == logging.WARNING and "a restart loses every job" in record.getMessage()
