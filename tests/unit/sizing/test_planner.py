"""Worker sizing: the cap, the default within it, overrides, threads and GPU placement."""

from __future__ import annotations

import pytest

from service.backends.footprint import Footprint
from service.settings import Settings
from service.sizing.gpu import Gpu, GpuDiscovery
from service.sizing.machine import Machine
from service.sizing.planner import PlanError, plan_workers

GIB, MIB = 1024**3, 1024**2
NO_GPU = GpuDiscovery((), "none", ("NVML: not found",))


def machine(cores=2, available_gib=24.0):
    return Machine(cores=cores, ram_total_bytes=int(32 * GIB), ram_available_bytes=int(available_gib * GIB))


def footprint(worker_mib=1000, model_mib=400):
    return Footprint(runtime_bytes=(worker_mib - model_mib) * MIB, model_bytes=model_mib * MIB)


def gpus(*memory_mb):
    return GpuDiscovery(tuple(Gpu(i, f"GPU-{i}", "Test GPU", mb) for i, mb in enumerate(memory_mb)), "nvml")


def test_cap_is_cores_formula_when_ram_is_plentiful():
    plan = plan_workers(Settings(), machine(cores=2), footprint(), NO_GPU)
    assert plan.cap == 5  # 2 x 2 + 1


def test_cap_is_ram_when_the_model_is_large():
    # 10 GiB available, 20% headroom: 8 GiB usable / 3 GiB per worker = 2.
    plan = plan_workers(Settings(), machine(cores=16, available_gib=10), footprint(worker_mib=3072), NO_GPU)
    assert plan.cap == 2 and plan.workers == 2


def test_cpu_default_gives_each_worker_two_cores_not_the_cap():
    assert plan_workers(Settings(), machine(cores=2), footprint(), NO_GPU).workers == 1
    assert plan_workers(Settings(), machine(cores=8), footprint(), NO_GPU).workers == 4
    assert plan_workers(Settings(), machine(cores=1), footprint(), NO_GPU).workers == 1


def test_threads_split_the_cores_between_workers():
    plan = plan_workers(Settings(), machine(cores=8), footprint(), NO_GPU)
    assert {p.intra_op_threads for p in plan.placements} == {2}
    assert {p.inter_op_threads for p in plan.placements} == {2}  # one op for each of the 2 concurrent batches
    serial = plan_workers(Settings(concurrent_batches=1), machine(cores=8), footprint(), NO_GPU)
    assert {p.inter_op_threads for p in serial.placements} == {1}
    overridden = plan_workers(Settings(intra_op_threads=3, inter_op_threads=2), machine(cores=8), footprint(), NO_GPU)
    assert overridden.placement(0).intra_op_threads == 3 and overridden.placement(0).inter_op_threads == 2


def test_workers_setting_overrides_and_warns_above_the_cap():
    plan = plan_workers(Settings(workers=3), machine(cores=2), footprint(), NO_GPU)
    assert plan.workers == 3 and plan.reason == "set by WORKERS" and not plan.warnings
    assert plan.placement(0).intra_op_threads == 1  # max(1, 2 // 3)
    too_many = plan_workers(Settings(workers=9), machine(cores=2), footprint(), NO_GPU)
    assert too_many.workers == 9 and "above the cap" in too_many.warnings[0]


def test_model_that_does_not_fit_is_refused():
    with pytest.raises(PlanError, match="not even one worker"):
        plan_workers(Settings(), machine(available_gib=1), footprint(worker_mib=4096), NO_GPU)


def test_one_worker_per_gpu_by_default_with_split_memory():
    plan = plan_workers(Settings(), machine(cores=8), footprint(model_mib=400), gpus(16000, 16000))
    assert plan.workers == 2
    assert [p.gpu.uuid for p in plan.placements] == ["GPU-0", "GPU-1"]
    # 90% of 16000 MB for one worker, less its 1024 MB of CUDA context.
    assert [p.gpu_memory_limit_mb for p in plan.placements] == [13376, 13376]


def test_workers_sharing_a_gpu_stay_within_its_budget():
    settings = Settings(workers=5)
    plan = plan_workers(settings, machine(cores=16), footprint(model_mib=400), gpus(16000, 8000))
    assert [p.gpu.index for p in plan.placements] == [0, 1, 0, 1, 0]  # worker i on GPU i mod n
    for index, memory_mb in enumerate((16000, 8000)):
        sharing = [p for p in plan.placements if p.gpu.index == index]
        used = sum(p.gpu_memory_limit_mb + settings.gpu_process_overhead_mb for p in sharing)
        assert used <= memory_mb * (1 - settings.gpu_memory_headroom)
        assert sum(p.gpu_memory_limit_mb for p in sharing) <= memory_mb * (1 - settings.gpu_memory_headroom)


def test_gpu_memory_caps_the_workers():
    # 4000 MB x 0.9 = 3600 MB; each worker needs 2 x 800 MB + 1024 MB = 2624 MB: one fits.
    plan = plan_workers(Settings(workers_per_gpu=4), machine(cores=16), footprint(model_mib=800), gpus(4000))
    assert plan.cap == 1 and plan.workers == 1


def test_fixed_gpu_memory_limit_is_used_and_checked():
    plan = plan_workers(Settings(gpu_memory_limit_mb=2000), machine(cores=8), footprint(), gpus(16000))
    assert plan.placement(0).gpu_memory_limit_mb == 2000 and not plan.warnings
    crowded = plan_workers(Settings(workers=4, gpu_memory_limit_mb=4000), machine(cores=8), footprint(), gpus(16000))
    assert any("exceeds its budget" in warning for warning in crowded.warnings)


def test_plan_describes_itself_in_one_block():
    text = plan_workers(Settings(), machine(cores=8), footprint(), gpus(16000)).describe(Settings())
    for expected in ("8 cores", "GPU 0 Test GPU 16000 MB", "1000 MiB per worker", "worker cap", "memory limit"):
        assert expected in text
    assert "adaptive policy, no latency objective" in text  # the default
    fixed = Settings(batch_policy="fixed")
    assert "timeout 1 ms, no latency objective" in plan_workers(fixed, machine(), footprint(), gpus()).describe(fixed)
    adaptive = Settings(batch_policy="adaptive", latency_slo_ms=50)
    adaptive_plan = plan_workers(adaptive, machine(), footprint(), gpus())
    assert "adaptive policy, objective 50 ms" in adaptive_plan.describe(adaptive)


def several(*model_mib, runtime_mib=600):
    """(the worker's footprint with every model, each model's): as the master measures them."""
    each = tuple((f"m{index}", Footprint(runtime_mib * MIB, mib * MIB)) for index, mib in enumerate(model_mib))
    return Footprint.together([("tensorflow", model) for _, model in each]), each


def test_models_that_fit_together_all_stay_loaded():
    together, each = several(400, 400, 400)
    plan = plan_workers(Settings(), machine(cores=4, available_gib=8), together, NO_GPU, each)
    assert plan.placement(0).model_memory_bytes is None and plan.footprint == together
    assert "on demand" not in plan.describe(Settings())


def test_the_plan_says_how_grpc_is_served_and_what_a_grpc_heavy_service_should_use():
    plan = plan_workers(Settings(), machine(), footprint(), gpus())
    assert "gRPC         port 8500, from each worker's hub" in plan.describe(Settings())
    gthread = Settings(worker_class="gthread")
    assert "WORKER_CLASS=gevent for gRPC-heavy traffic" in plan.describe(gthread)
    assert "gRPC         off (GRPC_PORT=0)" in plan.describe(Settings(grpc_port=0))


def test_models_that_do_not_fit_load_on_demand_within_the_workers_share_of_ram():
    together, each = several(3000, 3000, 3000, 3000)  # 12 GB of models, 10 GB available
    plan = plan_workers(Settings(), machine(cores=4, available_gib=10), together, NO_GPU, each)
    usable = 10 * GIB * (1 - Settings().ram_headroom)
    assert plan.workers == 2, "two workers of 2 cores each still hold the largest model beside the runtimes"
    budget = plan.placement(0).model_memory_bytes
    assert budget == int(usable / 2 - 600 * MIB) and budget >= 3000 * MIB
    assert plan.workers * (600 * MIB + budget) <= usable
    assert "on demand" in plan.describe(Settings()) and "set by the plan" in plan.describe(Settings())


def test_fewer_workers_when_their_share_would_not_hold_the_largest_model():
    together, each = several(500, 4000, 500)
    plan = plan_workers(Settings(), machine(cores=8, available_gib=8), together, NO_GPU, each)
    assert plan.workers == 1 and plan.placement(0).model_memory_bytes >= 4000 * MIB
    with pytest.raises(PlanError, match="largest model needs"):
        plan_workers(Settings(), machine(cores=8, available_gib=4), together, NO_GPU, each)


def test_model_memory_mb_sets_the_budget_and_the_workers_are_sized_for_it():
    together, each = several(1000, 1000, 1000)
    settings = Settings(model_memory_mb=2000)
    plan = plan_workers(settings, machine(cores=4, available_gib=24), together, NO_GPU, each)
    assert plan.placement(1).model_memory_bytes == 2000 * MIB and plan.footprint.model_bytes == 2000 * MIB
    assert "MODEL_MEMORY_MB=2000" in plan.describe(settings)
    roomy = plan_workers(Settings(model_memory_mb=5000), machine(cores=4), together, NO_GPU, each)
    assert roomy.placement(0).model_memory_bytes is None, "a budget that holds them all loads them all"


def test_on_a_gpu_each_workers_memory_limit_holds_all_its_models():
    together, each = several(2000, 2000, 2000)
    plan = plan_workers(Settings(workers_per_gpu=2), machine(cores=8), together, gpus(16000), each)
    assert plan.workers == 1, "two workers would not each hold 6000 MiB of models and their activations"
    assert plan.placement(0).gpu_memory_limit_mb >= 2 * 6000
    larger = plan_workers(Settings(workers_per_gpu=2), machine(cores=8), together, gpus(40000), each)
    assert larger.workers == 2 and all(p.gpu_memory_limit_mb >= 2 * 6000 for p in larger.placements)
