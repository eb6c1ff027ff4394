"""A worker's model versions: loaded at start, then kept in line with MODEL_BASE_PATH by the poller.

Every version is loaded the same way: its backend's runtime configured for this worker's slot
(once per runtime, before its first model), the model loaded, and every padded batch size
warmed up before it takes a request. With MODEL_PATH the worker serves that one model as
version MODEL_VERSION, and nothing watches it.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Protocol

import psutil

from service.backends import backend_for, load_served_model
from service.backends.base import ModelLoadError, ServedModel
from service.backends.footprint import measure_footprint
from service.backends.lanes import CpuLanes
from service.settings import Settings
from service.threads import os_sleep, shorter_interpreter_slices
from service.version_policy import VersionPolicy, parse_labels
from service.versions.layout import files_stamp, find_versions
from service.versions.poller import VersionPoller
from service.versions.registry import ModelVersion, ModelVersions, VersionState
from service.versions.room import SwapRoom

log = logging.getLogger(__name__)

SWAP_WARM_UP_REPEATS = 2


class Placement(Protocol):
    """What the master's plan gives this worker (service/sizing/planner.py, `WorkerPlacement`)."""

    slot: int
    gpu: object | None
    gpu_memory_limit_mb: int | None
    intra_op_threads: int
    inter_op_threads: int
    workers: int  # in the whole plan: how many may swap a version at once

    @property
    def device(self) -> str: ...


class VersionLoader:
    """Loads one model's versions in this worker, configured for its placement (None outside Gunicorn).

    `configured` names the runtimes already configured in this worker: the loaders of its models
    share it, as a runtime's threads and devices are set once per process. So do they share
    `lanes`, the CPU devices their models run on (service/backends/lanes.py).
    """

    def __init__(
        self,
        settings: Settings,
        placement: Placement | None,
        configured: set[str] | None = None,
        lanes: CpuLanes | None = None,
    ):
        self._settings = settings
        self._placement = placement
        self._configured = configured if configured is not None else set()
        self._lanes = lanes or CpuLanes()

    @property
    def on_gpu(self) -> bool:
        return self._placement is not None and self._placement.gpu is not None

    def load(self, path: str, version: int, beside_others: bool = False) -> ServedModel:
        """The model at `path` as `version`, warmed up at every padded batch size; ModelLoadError saying why not.

        A version loaded `beside_others` (while others serve) warms up with fewer timed repeats,
        which only seed the cost model, and pauses after each pass as long as the pass took: its
        passes run on the same cores, at the same priority, as the passes of the versions serving.
        Its Python runs in shorter slices of the interpreter lock (`shorter_interpreter_slices`), and
        a large Keras file's weights are read by a child process (service/backends/keras_weights.py).
        """
        settings, placement = self._settings, self._placement
        backend = backend_for(path, settings.model_backend)
        if backend.name not in self._configured:
            if placement is not None:
                devices = backend.configure(
                    placement.intra_op_threads,
                    placement.inter_op_threads,
                    placement.gpu_memory_limit_mb,
                    self._lanes.count,
                )
                log.info("worker slot %d: %s; %s devices %s", placement.slot, placement.device, backend.name, devices)
            _freeze_runtime(backend.runtime_module)
            self._configured.add(backend.name)
        with shorter_interpreter_slices() if beside_others else nullcontext():
            name = settings.served_model_name
            lane = self._lanes.lane_for(name)
            model = load_served_model(
                path, name, version, settings.padded_batch_sizes(), settings.model_backend, lane, beside_others
            )
            if lane is not None and backend.name == "tensorflow":
                log.info("model %s version %d runs on CPU lane %s of %d", name, version, lane, self._lanes.count)
            model.warm_up(
                SWAP_WARM_UP_REPEATS if beside_others else 5,
                memory_check_passes=settings.concurrent_batches if self.on_gpu else 0,
                pause=os_sleep if beside_others else None,
            )
        return model

    def initial_versions(self, beside_others: bool = False) -> ModelVersions:
        """The versions to serve from the start: MODEL_PATH's one, or those of MODEL_BASE_PATH the policy selects.

        `beside_others`: loaded while other models serve, as `load` says.

        When none of those loads, the newest older version that does (the last good one) serves
        until one of them loads: the poller then retires it. The failed ones are END with their
        error, as when a running worker fails to load a version. Raises ModelLoadError when
        nothing on disk loads (each version's error in the message).
        """
        settings = self._settings
        versions = ModelVersions(settings.served_model_name, parse_labels(settings.model_version_labels))
        if not settings.model_base_path:
            started = time.monotonic()
            model = self.load(settings.model_path, settings.model_version, beside_others)
            versions.add(settings.model_version, settings.model_path, model, time.monotonic() - started)
            return versions
        found = find_versions(settings.model_base_path)
        policy = VersionPolicy.parse(settings.model_version_policy)
        for number in sorted(policy.select(found), reverse=True):
            self._load_into(versions, number, found[number], beside_others)
        for number in policy.fallbacks(found):
            if versions.numbers(VersionState.AVAILABLE):
                break
            self._load_into(versions, number, found[number], beside_others)
            if versions.get(number).state == VersionState.AVAILABLE:
                log.warning(
                    "serving version %d, the newest that loads, until a version MODEL_VERSION_POLICY=%s selects "
                    "loads: %s", number, settings.model_version_policy, self._failures(versions),
                )  # fmt: skip
        if not versions.numbers(VersionState.AVAILABLE):
            raise ModelLoadError(
                f"MODEL_BASE_PATH={settings.model_base_path!r} has no version to serve under "
                f"MODEL_VERSION_POLICY={settings.model_version_policy} "
                f"({self._failures(versions) or 'no numeric version directory'})"
            )
        return versions

    def _load_into(self, versions: ModelVersions, number: int, path: str, beside_others: bool) -> None:
        versions.load(number, path, files_stamp(path), lambda model_path: self.load(model_path, number, beside_others))

    @staticmethod
    def _failures(versions: ModelVersions) -> str:
        return "; ".join(
            f"version {s['version']}: {s['status']['error_message']}"
            for s in versions.statuses()
            if s["state"] == "END"
        )

    def poller(
        self,
        versions: ModelVersions,
        on_available: Callable[[ModelVersion], None],
        on_released: Callable[[ModelVersion], None],
    ) -> VersionPoller:
        """The poller of MODEL_BASE_PATH for these versions, not started."""
        settings = self._settings
        room = SwapRoom(
            lock_path=os.path.join(tempfile.gettempdir(), f"tf-model-server-{settings.port}.versions.lock"),
            workers=self._placement.workers if self._placement is not None else 1,
            ram_headroom=settings.ram_headroom,
            measure=lambda path: measure_footprint(
                path, settings.padded_batch_sizes(), settings.footprint_cache, settings.model_backend
            ),
            available_bytes=lambda: psutil.virtual_memory().available,
        )
        return VersionPoller(
            settings.model_base_path,
            VersionPolicy.parse(settings.model_version_policy),
            versions,
            lambda path, version: self.load(path, version, beside_others=True),
            drain_timeout_s=settings.graceful_timeout_s,
            room=room,
            on_available=on_available,
            on_released=_collected(on_released),
        )


def _freeze_runtime(module: str) -> None:
    """Import the runtime, then freeze every object so far out of the cyclic garbage collector's walks.

    TensorFlow leaves some 365,000 long-lived objects, which every full collection walked: a pause
    of 0.2-0.3 s for every thread that needs the GIL, several times a minute under load
    (BENCHMARKS.md). A model adds a few thousand, left unfrozen so that a released version is
    collected: a full collection then takes about 1 ms, and the one after a release about 30 ms.
    """
    importlib.import_module(module)
    gc.collect()
    gc.freeze()


def _collected(on_released: Callable[[ModelVersion], None]) -> Callable[[ModelVersion], None]:
    """After a version is released: collect the cycles its objects made, and with them its weights."""

    def released(version: ModelVersion) -> None:
        on_released(version)
        gc.collect()

    return released
