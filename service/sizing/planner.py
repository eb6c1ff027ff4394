"""How many workers to run, with how many threads each, and on which GPU with what memory limit.

Pure logic: it takes the machine, the measured model footprint and the GPUs found, and
returns a `WorkerPlan`. The Gunicorn master applies it; nothing here imports TensorFlow.

Worker count. The cap is min(2 x cores + 1, usable RAM / worker footprint) and, on GPU
machines, the workers that fit in GPU memory. Within the cap the default is not the cap:
- On CPU, one forward pass already uses every core it is given (intra-op threads), so
  extra workers do not add compute; they split the arrivals between more queues, which
  makes every batch smaller and the model less efficient. The default gives each worker
  `CPU_CORES_PER_WORKER` cores (measured on the heavy model, see docs/sizing.md).
- On GPU, `WORKERS_PER_GPU` workers per GPU (1 by default: one process per device keeps
  its batches large and its memory whole).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from service.backends.footprint import Footprint
from service.settings import Settings
from service.sizing.gpu import Gpu, GpuDiscovery
from service.sizing.machine import Machine

# Measured with the heavy model on a 2-core machine (docs/sizing.md): one worker using both
# cores served more than two single-core workers at every concurrency.
CPU_CORES_PER_WORKER = 2

MIB = 1024 * 1024


class PlanError(RuntimeError):
    """The model cannot be served on this machine as configured; the message says why."""


@dataclass(frozen=True)
class WorkerPlacement:
    """What one worker slot gets: its device and its TensorFlow threads."""

    slot: int
    gpu: Gpu | None
    gpu_memory_limit_mb: int | None
    intra_op_threads: int
    inter_op_threads: int
    workers: int = 1  # in the whole plan: each may hold a second version of the model while it swaps
    model_memory_bytes: int | None = None  # several models that do not all fit: loaded on demand within this

    @property
    def device(self) -> str:
        if self.gpu is None:
            return "CPU"
        return f"GPU {self.gpu.index} ({self.gpu.uuid}), memory limit {self.gpu_memory_limit_mb} MB"


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    reason: str
    cap: int
    cap_reason: str
    placements: tuple[WorkerPlacement, ...]
    machine: Machine
    footprint: Footprint
    discovery: GpuDiscovery
    warnings: tuple[str, ...] = ()
    models: tuple[tuple[str, Footprint], ...] = ()  # with several models: each one's footprint, by name
    memory_reason: str = ""  # why the models load on demand (placements' model_memory_bytes), if they do

    def placement(self, slot: int) -> WorkerPlacement:
        return self.placements[slot % len(self.placements)]

    def as_dict(self) -> dict:
        """The plan as plain data, for the master's structured log event."""
        return dataclasses.asdict(self)

    def describe(self, settings: Settings) -> str:
        """The plan as one readable block for the master's log."""
        machine = self.machine
        usable = machine.ram_available_bytes * (1 - settings.ram_headroom)
        gpus = (
            ", ".join(f"GPU {g.index} {g.name} {g.memory_total_mb} MB ({g.uuid})" for g in self.discovery.gpus)
            if self.discovery.gpus
            else "none (" + "; ".join(self.discovery.notes) + ")"
        )
        concurrency = (
            f"gthread, {settings.request_threads} request threads"
            if settings.worker_class == "gthread"
            else f"gevent, {settings.gevent_connections} requests at once"
        )
        lines = [
            "Sizing plan",
            f"  machine      {machine.cores} cores, {_gib(machine.ram_total_bytes)} RAM, "
            f"{_gib(machine.ram_available_bytes)} available, {_gib(usable)} usable "
            f"(RAM_HEADROOM={settings.ram_headroom:g})",
            f"  GPUs         {gpus}",
            *self._model_lines(settings),
            f"  worker cap   {self.cap} = {self.cap_reason}",
            f"  workers      {self.workers}: {self.reason}",
            f"  per worker   {concurrency}; max batch {settings.max_batch_size}, {_policy(settings)}, "
            f"{settings.concurrent_batches} concurrent batches, "
            f"queue {settings.max_queue} instances",
            f"  gRPC         {_grpc_transport(settings)}",
        ]
        for placement in self.placements:
            lines.append(
                f"  worker {placement.slot}     {placement.device}; TF threads intra-op "
                f"{placement.intra_op_threads}, inter-op {placement.inter_op_threads}"
            )
        lines += [f"  WARNING      {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def _model_lines(self, settings: Settings) -> list[str]:
        footprint = self.footprint
        measured = "cached measurement" if footprint.cached else "measured now"
        if not self.models:
            return [
                f"  model        {settings.model_base_path or settings.model_path}: {_mib(footprint.worker_bytes)} "
                f"per worker = runtime {_mib(footprint.runtime_bytes)} + model {_mib(footprint.model_bytes)} "
                f"({measured})"
            ]
        lines = [
            f"  models       {len(self.models)}: {_mib(footprint.worker_bytes)} per worker = runtimes "
            f"{_mib(footprint.runtime_bytes)} + models {_mib(footprint.model_bytes)} ({measured})"
        ]
        lines += [f"    {name:<12} {_mib(model.model_bytes)}" for name, model in self.models]
        budget = self.placements[0].model_memory_bytes if self.placements else None
        if budget is not None:
            lines.append(
                f"  on demand    {_mib(budget)} of models per worker ({self.memory_reason}): each loads on its "
                "first request, and the least recently used idle ones are unloaded to make room"
            )
        return lines


def plan_workers(
    settings: Settings,
    machine: Machine,
    footprint: Footprint,
    discovery: GpuDiscovery,
    models: tuple[tuple[str, Footprint], ...] = (),
) -> WorkerPlan:
    """Decide the worker count, threads and GPU placement (see the module docstring); `footprint` is a worker's,
    with every model it serves (`models`, when several, each one's for the plan's description).

    Raises PlanError when not even one worker fits in RAM or GPU memory.
    """
    gpus = discovery.gpus
    usable_bytes = machine.ram_available_bytes * (1 - settings.ram_headroom)
    model_memory_bytes, memory_reason = _model_memory(settings, machine, footprint, models, usable_bytes)
    if model_memory_bytes is not None:  # a worker holds its runtimes and the budget, not every model
        footprint = Footprint(footprint.runtime_bytes, model_memory_bytes, footprint.cached)
    cpu_cap = 2 * machine.cores + 1
    ram_cap = math.floor(usable_bytes / max(footprint.worker_bytes, 1))
    caps = {"2 x cores + 1": cpu_cap, f"RAM {_gib(usable_bytes)} / {_mib(footprint.worker_bytes)}": ram_cap}
    if gpus:
        caps["GPU memory"] = sum(_workers_fitting_gpu(gpu, settings, footprint) for gpu in gpus)
    cap = min(caps.values())
    cap_reason = "min(" + ", ".join(f"{name} = {value}" for name, value in caps.items()) + ")"
    if cap < 1:
        raise PlanError(f"not even one worker fits this machine: {cap_reason}; free memory or use a smaller model")

    warnings = []
    if settings.workers:
        workers, reason = settings.workers, "set by WORKERS"
        if workers > cap:
            warnings.append(f"WORKERS={workers} is above the cap of {cap}; expect swapping or OOM kills")
    elif gpus:
        workers = min(cap, len(gpus) * settings.workers_per_gpu)
        reason = f"{settings.workers_per_gpu} per GPU x {len(gpus)} GPUs, within the cap"
    else:
        workers = max(1, min(cap, machine.cores // CPU_CORES_PER_WORKER))
        reason = (
            f"one per {CPU_CORES_PER_WORKER} cores: each forward pass uses its worker's cores, and fewer "
            "workers keep each batcher's share of the traffic, and so its batches, larger"
        )

    intra_op = settings.intra_op_threads or max(1, machine.cores // workers)
    inter_op = settings.inter_op_threads or settings.concurrent_batches
    limits = _gpu_memory_limits(workers, gpus, settings, warnings)
    placements = tuple(
        WorkerPlacement(
            slot=slot,
            gpu=gpus[slot % len(gpus)] if gpus else None,
            gpu_memory_limit_mb=limits[slot] if gpus else None,
            intra_op_threads=intra_op,
            inter_op_threads=inter_op,
            workers=workers,
            model_memory_bytes=model_memory_bytes,
        )
        for slot in range(workers)
    )
    return WorkerPlan(
        workers, reason, cap, cap_reason, placements, machine, footprint, discovery, tuple(warnings), models,
        memory_reason,
    )  # fmt: skip


def _model_memory(
    settings: Settings, machine: Machine, together: Footprint, models: tuple[tuple[str, Footprint], ...], usable: float
) -> tuple[int | None, str]:
    """Each worker's budget for its models, and why; (None, "") when every model stays loaded.

    MODEL_MEMORY_MB sets it. Otherwise, when the models together do not fit the RAM of the
    workers the cores call for, it is those workers' share of RAM less their runtimes, and
    fewer workers when that would not hold the largest model. PlanError when not even one does.
    """
    if not models:
        return None, ""
    total = sum(footprint.model_bytes for _, footprint in models)
    if settings.model_memory_mb:
        budget = settings.model_memory_mb * MIB
        if budget >= total:
            return None, ""
        return budget, f"MODEL_MEMORY_MB={settings.model_memory_mb}"
    workers = settings.workers or max(1, machine.cores // CPU_CORES_PER_WORKER)
    if workers * together.worker_bytes <= usable:
        return None, ""
    largest = max(footprint.model_bytes for _, footprint in models)
    while workers > 1 and usable / workers - together.runtime_bytes < largest:
        workers -= 1
    budget = int(usable / workers - together.runtime_bytes)
    if budget < largest:
        raise PlanError(
            f"the largest model needs {_mib(largest)} beside the runtimes' {_mib(together.runtime_bytes)}, "
            f"and {_gib(usable)} of RAM is usable: free memory or serve it elsewhere"
        )
    return budget, (
        f"set by the plan: the models need {_mib(total)} together, and {workers} worker(s) share {_gib(usable)}"
    )


def _workers_fitting_gpu(gpu: Gpu, settings: Settings, footprint: Footprint) -> int:
    """Workers whose memory fits this GPU: a limit big enough for the model, plus per-process overhead."""
    budget_mb = gpu.memory_total_mb * (1 - settings.gpu_memory_headroom)
    # Weights plus as much again for activations and workspace, unless the user fixed the limit.
    needed_limit_mb = settings.gpu_memory_limit_mb or 2 * footprint.model_bytes / MIB
    return math.floor(budget_mb / (needed_limit_mb + settings.gpu_process_overhead_mb))


def _gpu_memory_limits(workers: int, gpus: tuple[Gpu, ...], settings: Settings, warnings: list) -> list[int]:
    """Per-slot TF memory limits; the limits of one GPU's workers add up to its budget less their overhead."""
    if not gpus:
        return []
    sharing = [sum(1 for slot in range(workers) if slot % len(gpus) == index) for index in range(len(gpus))]
    limits = []
    for slot in range(workers):
        gpu, count = gpus[slot % len(gpus)], sharing[slot % len(gpus)]
        budget_mb = gpu.memory_total_mb * (1 - settings.gpu_memory_headroom)
        if settings.gpu_memory_limit_mb:
            limit = settings.gpu_memory_limit_mb
            if count * (limit + settings.gpu_process_overhead_mb) > budget_mb and slot < len(gpus):
                warnings.append(
                    f"GPU_MEMORY_LIMIT_MB={limit} x {count} workers on GPU {gpu.index} exceeds its budget of "
                    f"{budget_mb:.0f} MB (GPU_MEMORY_HEADROOM={settings.gpu_memory_headroom:g})"
                )
        else:
            limit = math.floor(budget_mb / count - settings.gpu_process_overhead_mb)
            if limit < 1:
                raise PlanError(f"{count} workers on GPU {gpu.index} leave no memory for the model; lower WORKERS")
        limits.append(limit)
    return limits


def _policy(settings: Settings) -> str:
    objective = f"objective {settings.latency_slo_ms:g} ms" if settings.latency_slo_ms else "no latency objective"
    if settings.batch_policy == "adaptive":
        return f"adaptive policy, {objective}"
    return f"timeout {settings.batch_timeout_ms:g} ms, {objective}"


def _grpc_transport(settings: Settings) -> str:
    """How the workers serve gRPC, and what a service that gets most of its calls over gRPC should use."""
    if not settings.grpc_port:
        return "off (GRPC_PORT=0)"
    if settings.worker_class == "gevent":
        return f"port {settings.grpc_port}, from each worker's hub: a call costs about what a REST request does"
    return (
        f"port {settings.grpc_port}, grpcio's server on the request threads; it costs more per call than "
        "gevent's (WORKER_CLASS=gevent for gRPC-heavy traffic, BENCHMARKS.md)"
    )


def _gib(value: float) -> str:
    return f"{value / (1024 * MIB):.1f} GiB"


def _mib(value: float) -> str:
    return f"{value / MIB:.0f} MiB"
