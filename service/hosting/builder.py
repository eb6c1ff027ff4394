"""A model brought into a worker and let go of: its versions loaded, its batcher built, its base path watched.

A model hosted while others serve loads as a new version does (service/versions/worker.py): at
the lowest priority, warming up with pauses, so the models serving keep their cores. A model let
go of takes no new request, answers those it took (its versions drain, then its batcher), and
its memory is collected.
"""

from __future__ import annotations

import gc
import logging
from functools import partial

from service.backends.base import predict_each_model
from service.backends.lanes import CpuLanes
from service.batching.batcher import Batcher
from service.batching.cost_model import CostModel, largest_paying_size
from service.batching.policy import AdaptivePolicy, FixedTimeout, Observations
from service.batching.turns import PassTurns
from service.pipeline.inference import admission_budget_s, request_timeout_s
from service.pipeline.model_server import HostedModel, ModelServer
from service.settings import Settings
from service.telemetry import metrics
from service.versions.registry import ModelVersion, VersionState
from service.versions.worker import Placement, VersionLoader

log = logging.getLogger(__name__)


class ModelHosting:
    """Hosts models in one worker: each with its versions and batcher, their passes taking `turns` (None: one model).

    The runtimes' configuration (threads, devices) is shared by every model it loads: it is set
    once per process, before the first model of each runtime. So are the CPU lanes the models
    run on (`lanes`, service/backends/lanes.py; one: no lanes).
    """

    def __init__(self, server: ModelServer, placement: Placement | None, turns: PassTurns | None, lanes: int = 1):
        self._server = server
        self._placement = placement
        self._turns = turns
        self._configured: set[str] = set()
        self._lanes = CpuLanes(lanes)

    def host(self, settings: Settings, beside_others: bool = False) -> HostedModel:
        """The model `settings` names, loaded and warmed up, its batcher built; not routed to yet (`serve`).

        Raises ModelLoadError saying why when no version of it loads.
        """
        loader = VersionLoader(settings, self._placement, self._configured, self._lanes)
        versions = loader.initial_versions(beside_others)
        batcher = build_batcher(settings, versions.latest().warm_up_seconds, versions.name, self._turns)
        hosted = HostedModel(settings, versions, batcher)
        if settings.model_base_path:
            hosted.poller = loader.poller(
                versions,
                partial(_version_available, self._server),
                partial(_version_released, self._server, versions.name),
            )
        return hosted

    def serve(self, hosted: HostedModel) -> None:
        """Once routed to: its versions are counted as serving, and its base path watched (every MODEL_POLL_S)."""
        for number in sorted(hosted.versions.numbers(VersionState.AVAILABLE)):
            _count_serving(hosted.versions.get(number))
        if hosted.poller is not None and hosted.settings.model_poll_s > 0:
            hosted.poller.start(hosted.settings.model_poll_s)

    def let_go(self, hosted: HostedModel) -> bool:
        """Release a model no longer routed to, once its requests are answered (within GRACEFUL_TIMEOUT_S: True)."""
        server = self._server
        drain_s = server.settings.graceful_timeout_s
        if hosted.poller is not None:
            hosted.poller.stop(drain_s)
        drained = True
        for number in sorted(hosted.versions.numbers(VersionState.AVAILABLE)):
            version = hosted.versions.get(number)
            drained = hosted.versions.retire(number, drain_s) and drained
            _version_released(server, hosted.name, version)
        drained = hosted.batcher.close(drain_s) and drained
        self._lanes.release(hosted.name)
        gc.collect()  # the cycles of its objects, and with them its weights
        log.info("model %s is let go of%s", hosted.name, "" if drained else " with requests running")
        return drained


def _version_available(server: ModelServer, version: ModelVersion) -> None:
    """A new version serves: its metrics, and its cache identity (its files hashed now, not on a request).

    The batcher's cost model is kept: it learns the new version's passes as they run, where the
    new version's warm-up timings were taken beside the passes of the version serving.
    """
    server.cache_for(version.model)
    _count_serving(version)


def _count_serving(version: ModelVersion) -> None:
    """The version's metrics: it serves, and the stages of its passes are counted (statistics)."""
    model = version.model
    model.observe_pass = metrics.PassStages(model.name, model.version)
    metrics.version_serving(model.name, model.version, version.load_s)


def _version_released(server: ModelServer, model_name: str, version: ModelVersion) -> None:
    server.forget_cache(model_name, version.number)
    metrics.version_released(model_name, version.number)


def build_batcher(
    settings: Settings, warm_up_seconds: dict[int, float], model_name: str, turns: PassTurns | None = None
) -> Batcher:
    """A model's batcher, sized and seeded by the warm-up probe (`ServedModel.warm_up`) of its latest version.

    The largest batch is the largest size the warm-up could run (on a GPU, what fits its
    memory). Under the adaptive policy a batch counts as full at the size where larger ones
    stop paying, and the probe's timings are its first cost model. Each queued request names
    the version that runs it (`predict_each_model`).
    """
    largest = max(warm_up_seconds)
    observations = Observations(CostModel(warm_up_seconds))
    if settings.batch_policy == "adaptive":
        policy = AdaptivePolicy(observations, settings.latency_slo_s, largest)
        preferred = largest_paying_size(warm_up_seconds)
    else:
        policy, preferred = FixedTimeout(settings.batch_timeout_ms / 1000), largest
    log.info(
        "batching %s: %s policy, batches up to %d instances, full at %d",
        model_name, settings.batch_policy, largest, preferred,
    )  # fmt: skip
    return Batcher(
        predict_each_model,
        policy,
        max_batch_size=largest,
        max_queue=settings.max_queue,
        concurrent_batches=settings.concurrent_batches,
        preferred_batch_size=preferred,
        observations=observations,
        observer=metrics.BatchMetrics(model_name),
        name=f"batcher-{model_name}",
        default_budget_s=admission_budget_s(settings, request_timeout_s(settings, None)),
        turns=turns,
    )
