"""GPU discovery with fakes of NVML and nvidia-smi, and per-worker TF configuration with a fake tf.config."""

from __future__ import annotations

import os
from types import SimpleNamespace

from service.sizing.gpu import discover_gpus, pin_visible_gpu


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


def test_pinning_uses_the_uuid(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pin_visible_gpu("GPU-aaa")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaa"
    pin_visible_gpu(None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
