"""gpu_check's verdicts, from a planned two-GPU machine and fake worker reports and NVML usage."""

from __future__ import annotations

from scripts.gpu_check import check_workers, parse_worker_reports
from service.backends.footprint import Footprint
from service.settings import Settings
from service.sizing.gpu import Gpu, GpuDiscovery
from service.sizing.machine import Machine
from service.sizing.planner import plan_workers

MIB = 1024 * 1024
SETTINGS = Settings(workers=2)
PLAN = plan_workers(
    SETTINGS,
    Machine(cores=8, ram_total_bytes=64 << 30, ram_available_bytes=60 << 30),
    Footprint(runtime_bytes=600 * MIB, model_bytes=400 * MIB),
    GpuDiscovery((Gpu(0, "GPU-a", "T4", 15360), Gpu(1, "GPU-b", "T4", 15360)), "nvml"),
)
LOG = """
T [101] INFO service.app: worker slot 0: GPU 0 (GPU-a); TensorFlow devices ['/device:CPU:0', '/device:GPU:0']
T [102] INFO service.app: worker slot 1: GPU 1 (GPU-b); TensorFlow devices ['/device:CPU:0', '/device:GPU:0']
"""


def test_reports_are_parsed_per_worker_pid():
    assert parse_worker_reports(LOG) == {
        101: (0, ["/device:CPU:0", "/device:GPU:0"]),
        102: (1, ["/device:CPU:0", "/device:GPU:0"]),
    }


def test_workers_on_their_planned_gpus_within_limits_pass():
    usage = {"GPU-a": {101: 3000 * MIB}, "GPU-b": {102: 3000 * MIB}}
    checks = check_workers(PLAN, SETTINGS, parse_worker_reports(LOG), usage)
    assert [check.problems for check in checks] == [(), ()]


def test_wrong_gpu_and_excess_memory_are_reported():
    limit = PLAN.placement(1).gpu_memory_limit_mb
    usage = {"GPU-a": {101: 1000 * MIB, 102: (limit + 2000) * MIB}, "GPU-b": {}}
    second = check_workers(PLAN, SETTINGS, parse_worker_reports(LOG), usage)[1]
    assert any("planned GPU-b" in problem for problem in second.problems)
    assert any("above its limit" in problem for problem in second.problems)


def test_a_worker_that_sees_no_gpu_in_tensorflow_fails():
    log = LOG.replace(", '/device:GPU:0'", "", 1)  # worker 0 sees no GPU
    checks = check_workers(PLAN, SETTINGS, parse_worker_reports(log), {"GPU-a": {}, "GPU-b": {102: MIB}})
    assert any("sees 0 GPUs" in problem for problem in checks[0].problems)
