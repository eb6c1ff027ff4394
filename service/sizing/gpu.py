"""GPUs: found in the master without CUDA, configured in each worker before TensorFlow starts.

Discovery uses NVML (nvidia-ml-py) or, failing that, `nvidia-smi`; neither creates a CUDA
context, so the master can fork safely afterwards. No NVML library and no `nvidia-smi`
means a CPU machine, not an error. Each worker is pinned to its GPU by UUID through
`CUDA_VISIBLE_DEVICES` (NVML's indices can differ from CUDA's) before it imports
TensorFlow, then given a memory limit on that GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML's index, for people reading the plan; CUDA is told the UUID
    uuid: str
    name: str
    memory_total_mb: int


@dataclass(frozen=True)
class GpuDiscovery:
    gpus: tuple[Gpu, ...]
    source: str  # "nvml", "nvidia-smi" or "none"
    notes: tuple[str, ...] = field(default=())


def discover_gpus(nvml=None, nvidia_smi_runner=None) -> GpuDiscovery:
    """The machine's GPUs. `nvml` and `nvidia_smi_runner` replace pynvml and the subprocess in tests."""
    notes = []
    try:
        return GpuDiscovery(_discover_with_nvml(nvml), "nvml")
    except Exception as error:  # no library, no driver, or no device: try the command line
        notes.append(f"NVML: {error}")
    try:
        return GpuDiscovery(_discover_with_nvidia_smi(nvidia_smi_runner), "nvidia-smi")
    except Exception as error:
        notes.append(f"nvidia-smi: {error}")
    return GpuDiscovery((), "none", tuple(notes))


def _discover_with_nvml(nvml) -> tuple[Gpu, ...]:
    if nvml is None:
        import pynvml as nvml
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total_mb=nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024),
                )
            )
        return tuple(gpus)
    finally:
        nvml.nvmlShutdown()  # before any fork: NVML's handles are not for the children


def _discover_with_nvidia_smi(runner) -> tuple[Gpu, ...]:
    if runner is None:
        if shutil.which("nvidia-smi") is None:
            raise FileNotFoundError("not installed")
        runner = _run_nvidia_smi
    gpus = []
    for line in runner().strip().splitlines():
        index, uuid, name, memory_mb = (part.strip() for part in line.split(","))
        gpus.append(Gpu(int(index), uuid, name, int(float(memory_mb))))
    return tuple(gpus)


def _run_nvidia_smi() -> str:
    query = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"]
    return subprocess.run(query, capture_output=True, text=True, check=True, timeout=30).stdout


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pin_visible_gpu(gpu_uuid: str | None) -> None:
    """In a worker, before TensorFlow is imported: show it only its own GPU (or none)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_uuid or ""
