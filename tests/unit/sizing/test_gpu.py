"""GPU discovery with fakes of NVML and nvidia-smi, and per-worker TF configuration with a fake tf.config."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from service.sizing.gpu import configure_tensorflow, discover_gpus, pin_visible_gpu


class FakeNvml:
    """The part of pynvml the master uses, over a list of (uuid, name, total bytes)."""

    def __init__(self, devices, fail_init=False):
        self.devices, self.fail_init, self.shut_down = devices, fail_init, False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle):
        return handle[0].encode()

    def nvmlDeviceGetName(self, handle):
        return handle[1]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=handle[2], free=handle[2])

    def nvmlShutdown(self):
        self.shut_down = True


def test_nvml_discovery_and_shutdown():
    nvml = FakeNvml([("GPU-aaa", "A100", 40 * 1024**3), ("GPU-bbb", "A100", 40 * 1024**3)])
    found = discover_gpus(nvml=nvml)
    assert found.source == "nvml"
    assert [(g.index, g.uuid, g.memory_total_mb) for g in found.gpus] == [(0, "GPU-aaa", 40960), (1, "GPU-bbb", 40960)]
    assert nvml.shut_down  # before the master forks


def test_falls_back_to_nvidia_smi():
    found = discover_gpus(nvml=FakeNvml([], fail_init=True), nvidia_smi_runner=lambda: "0, GPU-ccc, Tesla T4, 15360\n")
    assert found.source == "nvidia-smi" and found.gpus[0].uuid == "GPU-ccc" and found.gpus[0].memory_total_mb == 15360


def test_no_gpu_is_the_cpu_path_not_an_error():
    def missing():
        raise FileNotFoundError("not installed")

    found = discover_gpus(nvml=FakeNvml([], fail_init=True), nvidia_smi_runner=missing)
    assert found.gpus == () and found.source == "none"
    assert "NVML Shared Library Not Found" in found.notes[0]


def test_real_discovery_on_this_machine_finds_no_gpu():
    assert discover_gpus().gpus == ()


class FakeTfConfig:
    """Records what a worker asks of tf.config, and refuses late changes as TF does."""

    def __init__(self, gpus):
        self.calls, self._gpus, self.started = [], gpus, False
        self.threading = SimpleNamespace(
            set_intra_op_parallelism_threads=lambda n: self._record("intra", n),
            set_inter_op_parallelism_threads=lambda n: self._record("inter", n),
        )
        self.LogicalDeviceConfiguration = lambda memory_limit: ("logical", memory_limit)

    def _record(self, *call):
        if self.started:
            raise RuntimeError("cannot be modified after initialization")
        self.calls.append(call)

    def list_physical_devices(self, kind):
        return list(self._gpus) if kind == "GPU" else []

    def set_logical_device_configuration(self, device, configs):
        self._record("limit", device, configs)

    def list_logical_devices(self):
        self.started = True
        return [SimpleNamespace(name="/device:CPU:0")] + [SimpleNamespace(name="/device:GPU:0") for _ in self._gpus]


def test_worker_configuration_sets_threads_then_memory_limit():
    config = FakeTfConfig(gpus=["PhysicalDevice(GPU:0)"])
    devices = configure_tensorflow(2, 1, 6000, tf=SimpleNamespace(config=config))
    assert config.calls == [("intra", 2), ("inter", 1), ("limit", "PhysicalDevice(GPU:0)", [("logical", 6000)])]
    assert devices == ["/device:CPU:0", "/device:GPU:0"]


def test_cpu_worker_sets_no_memory_limit():
    config = FakeTfConfig(gpus=[])
    assert configure_tensorflow(4, 1, None, tf=SimpleNamespace(config=config)) == ["/device:CPU:0"]
    assert [call[0] for call in config.calls] == ["intra", "inter"]


def test_gpu_worker_without_a_visible_gpu_fails_loudly():
    with pytest.raises(RuntimeError, match="sees none"):
        configure_tensorflow(1, 1, 6000, tf=SimpleNamespace(config=FakeTfConfig(gpus=[])))


def test_pinning_uses_the_uuid(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pin_visible_gpu("GPU-aaa")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaa"
    pin_visible_gpu(None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
