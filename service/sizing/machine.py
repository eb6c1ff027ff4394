"""What the machine (or the container it runs in) offers: CPU cores and memory.

Container limits win over the host's figures: a pod limited to 2 CPUs and 4 GiB on a
64-core host must be sized as 2 cores and 4 GiB, or every worker would be OOM-killed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Machine:
    cores: int
    ram_total_bytes: int
    ram_available_bytes: int


def detect_machine(cgroup_root: Path = CGROUP_ROOT) -> Machine:
    """Cores this process may use and RAM it may fill, honouring cgroup v1/v2 limits."""
    cores = len(os.sched_getaffinity(0))
    quota_cores = _cgroup_cpu_quota(cgroup_root)
    if quota_cores is not None:
        cores = max(1, min(cores, math.floor(quota_cores)))
    memory = psutil.virtual_memory()
    total, available = memory.total, memory.available
    limit = _cgroup_memory_limit(cgroup_root)
    if limit is not None and limit < total:
        used = _read_int(cgroup_root / "memory.current") or _read_int(cgroup_root / "memory/memory.usage_in_bytes") or 0
        total, available = limit, min(available, max(0, limit - used))
    return Machine(cores=cores, ram_total_bytes=total, ram_available_bytes=available)


def _cgroup_cpu_quota(root: Path) -> float | None:
    cpu_max = _read_text(root / "cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
    if cpu_max:
        quota, _, period = cpu_max.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota = _read_int(root / "cpu/cpu.cfs_quota_us")  # cgroup v1
    period = _read_int(root / "cpu/cpu.cfs_period_us")
    if quota and quota > 0 and period:
        return quota / period
    return None


def _cgroup_memory_limit(root: Path) -> int | None:
    limit = _read_int(root / "memory.max") or _read_int(root / "memory/memory.limit_in_bytes")
    # cgroup v1 reports "no limit" as a huge number near 2**63.
    if limit is None or limit >= 2**60:
        return None
    return limit


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None or not text.isdigit():
        return None
    return int(text)
