"""Gunicorn hook bodies with stand-ins for Gunicorn's arbiter and worker objects."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.backends.footprint import Footprint, FootprintError
from service.settings import Settings
from service.sizing import hooks, placement
from service.sizing.gpu import Gpu, GpuDiscovery
from service.sizing.machine import Machine
from service.sizing.planner import plan_workers
from service.version_policy import LayoutError

PLAN = plan_workers(
    Settings(workers=3),
    Machine(cores=8, ram_total_bytes=64 << 30, ram_available_bytes=60 << 30),
    Footprint(runtime_bytes=600 << 20, model_bytes=400 << 20),
    GpuDiscovery((Gpu(0, "GPU-a", "T4", 15360), Gpu(1, "GPU-b", "T4", 15360)), "nvml"),
)


def spawn(arbiter, pid):
    worker = SimpleNamespace(pid=pid)
    hooks.assign_slot(arbiter, worker)  # pre_fork: before the worker joins WORKERS
    arbiter.WORKERS[pid] = worker
    return worker


def test_slots_are_dense_and_a_dead_workers_slot_is_reused():
    arbiter = SimpleNamespace(WORKERS={})
    workers = [spawn(arbiter, pid) for pid in (10, 11, 12)]
    assert [w.slot for w in workers] == [0, 1, 2]
    del arbiter.WORKERS[11]  # the worker in slot 1 died
    replacement = spawn(arbiter, 13)
    assert replacement.slot == 1  # it takes the dead worker's GPU, not a new one


@pytest.fixture
def restore_placement(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unchanged")
    yield
    placement._this_worker_placement = None


def test_post_fork_lets_a_sigterm_end_a_worker_still_booting(restore_placement):
    import signal

    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # as the master's handler, inherited by the fork
    try:
        hooks.place_worker(PLAN, SimpleNamespace(WORKERS={}), SimpleNamespace(slot=0))
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_post_fork_pins_the_slots_gpu_before_tensorflow(restore_placement):
    hooks.place_worker(PLAN, SimpleNamespace(WORKERS={}), SimpleNamespace(slot=1))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-b"
    placed = placement.current_placement()
    assert placed.slot == 1 and placed.gpu_memory_limit_mb == PLAN.placements[1].gpu_memory_limit_mb
    hooks.place_worker(PLAN, SimpleNamespace(WORKERS={}), SimpleNamespace(slot=2))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-a"  # slot 2 of 2 GPUs: GPU 0


def test_worker_exit_drains_the_apps_batcher(app):
    server = app.extensions["model_server"]
    hooks.drain_worker(SimpleNamespace(wsgi=app))
    assert not server.ready
    hooks.drain_worker(SimpleNamespace())  # a worker that never loaded the app


def test_metrics_dir_is_emptied_at_start_and_kept_when_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    configured = tmp_path / "metrics"
    configured.mkdir()
    (configured / "counter_123.db").write_bytes(b"stale")
    (configured / "keep.txt").write_text("not ours")
    path = hooks.prepare_metrics_dir(Settings(metrics_dir=str(configured)))
    assert path == configured and os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(configured)
    assert sorted(p.name for p in configured.iterdir()) == ["keep.txt"]
    hooks.remove_metrics_dir(Settings(metrics_dir=str(configured)), path)
    assert configured.exists()


def test_without_a_metrics_dir_a_temporary_one_is_made_and_removed(monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    path = hooks.prepare_metrics_dir(Settings())
    assert path.is_dir() and not any(path.iterdir()) and os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(path)
    hooks.remove_metrics_dir(Settings(), path)
    assert not path.exists()


def test_a_dead_workers_live_gauge_files_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("gauge_livesum_41.db", "gauge_liveall_41.db", "counter_41.db", "gauge_livesum_42.db"):
        (tmp_path / name).write_bytes(b"")
    hooks.forget_worker(SimpleNamespace(WORKERS={}), SimpleNamespace(pid=41))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_41.db", "gauge_livesum_42.db"]


def test_the_plan_is_for_the_highest_version_the_policy_serves_then_the_older_ones(tmp_path):
    for number in (1, 2, 10):
        (tmp_path / str(number)).mkdir()
        (tmp_path / str(number) / "model.onnx").write_bytes(b"weights")
    settings = Settings(model_base_path=str(tmp_path))
    assert hooks.models_to_plan_for(settings) == [str(tmp_path / n / "model.onnx") for n in ("10", "2", "1")]
    specific = Settings(model_base_path=str(tmp_path), model_version_policy="specific:1,2")
    assert hooks.models_to_plan_for(specific) == [str(tmp_path / "2" / "model.onnx")]
    with pytest.raises(LayoutError, match=r"serves \(found: \[1, 2, 10\]\)"):
        hooks.models_to_plan_for(Settings(model_base_path=str(tmp_path), model_version_policy="specific:3"))


def test_the_master_plans_for_the_newest_version_that_loads(tmp_path, monkeypatch):
    for number in (1, 2, 3):
        (tmp_path / str(number)).mkdir()
        (tmp_path / str(number) / "model.onnx").write_bytes(b"weights")
    measured = []

    def measure(path, batch_sizes, cache, backend):
        measured.append(Path(path).parent.name)
        if path.startswith(str(tmp_path / "3")):
            raise FootprintError(f"{path!r} cannot be loaded: ModelLoadError: truncated")
        return Footprint(runtime_bytes=100 << 20, model_bytes=10 << 20)

    monkeypatch.setattr(hooks, "measure_footprint", measure)
    assert hooks.footprint_to_plan_for(Settings(model_base_path=str(tmp_path))).model_bytes == 10 << 20
    assert measured == ["3", "2"]  # the broken newest, then the last good one
    measured.clear()
    for number in (1, 2):
        (tmp_path / str(number) / "model.onnx").write_bytes(b"truncated")
    monkeypatch.setattr(hooks, "measure_footprint", lambda path, *args: measure(str(tmp_path / "3"), *args))
    with pytest.raises(FootprintError, match=r"no version loads: .*truncated; .*truncated; .*truncated"):
        hooks.footprint_to_plan_for(Settings(model_base_path=str(tmp_path)))


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MODEL_PATH": "/no/such/model.keras"}, "MODEL_PATH='/no/such/model.keras' does not exist"),
        ({"MAX_BATCH_SIZE": "lots"}, "MAX_BATCH_SIZE='lots' is not a valid int"),
        ({"MODEL_BASE_PATH": "/no/such/base"}, "MODEL_BASE_PATH='/no/such/base' cannot be read: No such file"),
    ],
)
def test_a_configuration_mistake_stops_the_master_with_one_line(monkeypatch, environ, message):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        hooks.configure_master()
    assert str(stopped.value.code).startswith(f"tf-model-server cannot start: {message}")
    assert "\n" not in str(stopped.value.code)


def test_an_unreadable_model_path_names_the_setting(tmp_path, monkeypatch):
    model = tmp_path / "model.keras"
    model.write_bytes(b"weights")
    monkeypatch.setattr(hooks.os, "access", lambda path, mode: False)  # as for a user without the permission
    with pytest.raises(LayoutError, match=r"MODEL_PATH=.* cannot be read by this user"):
        hooks.check_readable("MODEL_PATH", str(model))


def test_a_worker_serving_several_models_is_planned_for_all_of_them_each_runtime_once(tmp_path, monkeypatch):
    for name, suffix in (("alpha", "model.onnx"), ("beta", "model.onnx"), ("gamma", "saved")):
        (tmp_path / name / "1").mkdir(parents=True)
        if suffix == "saved":
            (tmp_path / name / "1" / "saved_model.pb").write_bytes(b"graph")  # a SavedModel: TensorFlow
        else:
            (tmp_path / name / "1" / suffix).write_bytes(b"weights")
    sizes = {"alpha": (100, 10), "beta": (120, 30), "gamma": (600, 200)}  # MiB: runtime, model

    def measure(path, batch_sizes, cache, backend):
        runtime, model = sizes[Path(path).parts[-3] if path.endswith(".onnx") else Path(path).parts[-2]]
        return Footprint(runtime_bytes=runtime << 20, model_bytes=model << 20)

    monkeypatch.setattr(hooks, "measure_footprint", measure)
    monkeypatch.setattr(hooks, "detect_machine", lambda: Machine(8, 64 << 30, 60 << 30))
    monkeypatch.setattr(hooks, "discover_gpus", lambda: GpuDiscovery((), "none"))
    plan = hooks.plan_for_this_machine(Settings(model_repository=str(tmp_path)))
    # onnxruntime counted once (its larger measurement), TensorFlow once; every model loaded.
    assert plan.footprint == Footprint(runtime_bytes=(120 + 600) << 20, model_bytes=(10 + 30 + 200) << 20)
    assert [name for name, _ in plan.models] == ["alpha", "beta", "gamma"]
    described = plan.describe(Settings(model_repository=str(tmp_path)))
    assert "models       3: 960 MiB per worker = runtimes 720 MiB + models 240 MiB" in described
    assert "gamma        200 MiB" in described
