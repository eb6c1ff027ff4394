"""On a GPU machine: start the server and verify that every worker runs on its planned GPU within its limit.

It plans as the Gunicorn master does, starts the real server with the current settings,
then reads each worker's own report (its log line with the TensorFlow devices it sees)
and NVML's list of processes per GPU, and checks for each worker:
- it sees exactly one GPU in TensorFlow,
- NVML shows its process on the GPU the plan gave its slot (matched by UUID),
- its GPU memory stays within its TF limit plus GPU_PROCESS_OVERHEAD_MB.
Exit status 0 when every worker passes.

    python scripts/gpu_check.py            # with the same environment variables as the server
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from scripts.launcher import LiveServer
from service.settings import Settings, load_settings
from service.sizing.hooks import plan_for_this_machine
from service.sizing.planner import WorkerPlan

WORKER_REPORT = re.compile(
    r"\[(?P<pid>\d+)\] INFO service\.app: worker slot (?P<slot>\d+): .*; TensorFlow devices (?P<devices>\[.*\])"
)
MIB = 1024 * 1024


@dataclass(frozen=True)
class WorkerCheck:
    pid: int
    slot: int
    planned_gpu: str
    planned_limit_mb: int
    seen_on_gpus: tuple[str, ...]
    used_mb: float
    tf_gpu_devices: int
    problems: tuple[str, ...]


def parse_worker_reports(log: str) -> dict[int, tuple[int, list[str]]]:
    """pid -> (slot, TensorFlow logical devices) from the workers' start-up lines."""
    reports = {}
    for match in WORKER_REPORT.finditer(log):
        devices = re.findall(r"'([^']+)'", match["devices"])
        reports[int(match["pid"])] = (int(match["slot"]), devices)
    return reports


def check_workers(
    plan: WorkerPlan, settings: Settings, reports: dict[int, tuple[int, list[str]]], usage: dict[str, dict[int, int]]
) -> list[WorkerCheck]:
    """Compare each reporting worker with its planned placement; `usage` is GPU uuid -> pid -> bytes."""
    checks = []
    for pid, (slot, devices) in sorted(reports.items()):
        placement = plan.placement(slot)
        planned = placement.gpu.uuid if placement.gpu else "CPU"
        seen = tuple(uuid for uuid, processes in usage.items() if pid in processes)
        used_mb = sum(usage[uuid][pid] for uuid in seen) / MIB
        gpu_devices = sum(1 for device in devices if ":GPU:" in device)
        problems = []
        if gpu_devices != 1:
            problems.append(f"TensorFlow sees {gpu_devices} GPUs, expected 1")
        if seen != (planned,):
            problems.append(f"NVML shows it on {list(seen) or 'no GPU'}, planned {planned}")
        allowed_mb = (placement.gpu_memory_limit_mb or 0) + settings.gpu_process_overhead_mb
        if used_mb > allowed_mb:
            problems.append(f"uses {used_mb:.0f} MB, above its limit + overhead {allowed_mb} MB")
        checks.append(
            WorkerCheck(
                pid, slot, planned, placement.gpu_memory_limit_mb or 0, seen, used_mb, gpu_devices, tuple(problems)
            )
        )
    return checks


def gpu_process_usage() -> dict[str, dict[int, int]]:
    import pynvml

    pynvml.nvmlInit()
    try:
        usage = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            usage[uuid] = {p.pid: p.usedGpuMemory or 0 for p in processes}
        return usage
    finally:
        pynvml.nvmlShutdown()


def main() -> int:
    settings = load_settings()
    plan = plan_for_this_machine(settings)
    print(plan.describe(settings))
    if not plan.discovery.gpus:
        print("\nno GPU found on this machine: nothing to check", file=sys.stderr)
        return 2
    with LiveServer({}) as server:
        checks = check_workers(plan, settings, parse_worker_reports(server.log()), gpu_process_usage())
    print("\n| worker pid | slot | planned GPU | limit (MB) | NVML sees it on | used (MB) | result |")
    print("|---|---|---|---|---|---|---|")
    for check in checks:
        result = "ok" if not check.problems else "; ".join(check.problems)
        print(
            f"| {check.pid} | {check.slot} | {check.planned_gpu} | {check.planned_limit_mb} | "
            f"{', '.join(check.seen_on_gpus) or '-'} | {check.used_mb:.0f} | {result} |"
        )
    if len(checks) != plan.workers:
        print(f"only {len(checks)} of {plan.workers} workers reported", file=sys.stderr)
        return 1
    return 0 if all(not check.problems for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
