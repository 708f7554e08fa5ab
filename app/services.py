"""The objects one running app owns, built in the lifespan and reached through dependencies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from prometheus_client.core import GaugeMetricFamily, Metric

from app.auth.verify import RequestVerifier
from app.inference.cache import EmbeddingCache
from app.inference.engine import EngineLike
from app.inference.model import ModelInfo
from app.inference.registry import ModelRegistry, ServedModel
from app.ops.admission import Admission, RequestTracker
from app.ops.metrics import Metrics, gauge, labelled_gauge
from app.ops.pod import STATE_UP_HELP, PodBoard, WorkerNotice
from app.pipeline import EmbeddingPipeline
from app.settings import Settings
from app.state.shared import SharedState

DRAINING_REASON = "draining: the server is shutting down"
# The gauges of one process's load (with WORKERS > 1 the pod sums them: app.ops.pod.SUMMED_GAUGES).
_LOAD_GAUGES = {
    "clip_requests_in_flight": "/v1 requests being answered",
    "clip_admitted_items": "Images and texts admitted and not yet answered",
    "clip_admitted_items_limit": "MAX_QUEUED_ITEMS",
    "clip_cache_entries": "Vectors held by the embedding cache",
}


class Status(StrEnum):
    LOADING = "loading"
    OK = "ok"
    FAILED = "failed"
    DRAINING = "draining"


@dataclass(slots=True)
class Services:
    """Everything a request handler may need; the model parts appear once loading is done."""

    settings: Settings
    verifier: RequestVerifier
    metrics: Metrics = field(default_factory=Metrics)
    admission: Admission = field(default_factory=lambda: Admission(limit=1024))
    requests: RequestTracker = field(default_factory=RequestTracker)
    cache: EmbeddingCache | None = None
    status: Status = Status.LOADING
    reason: str | None = "model is loading"
    load_seconds: float | None = None
    registry: ModelRegistry | None = None  # the served models, each with its engine (app.inference.registry)
    pod: PodBoard | None = None  # the other workers' notices, when WORKERS > 1
    state: SharedState | None = None  # nonces, cache and rate limits shared through STATE_URL
    state_up: bool = True  # whether the shared store answered the last check

    @classmethod
    def create(
        cls,
        settings: Settings,
        verifier: RequestVerifier,
        pod: PodBoard | None = None,
        state: SharedState | None = None,
    ) -> Services:
        """Build the services of one app, with its metrics, admission bound and cache."""
        cache = EmbeddingCache(settings.cache_max_entries) if settings.cache_max_entries > 0 else None
        metrics = Metrics(pod_gauges=pod.metrics if pod is not None else None)
        admission = Admission(settings.max_queued_items)
        services = cls(settings, verifier, metrics=metrics, admission=admission, cache=cache, pod=pod, state=state)
        services.metrics.add_gauges(services.model_gauges if pod is not None else services.gauges)
        if state is not None:
            state.count_failures(metrics.count_state_failures())
        return services

    @property
    def info(self) -> ModelInfo | None:
        """Return the default model's info, once it has loaded."""
        return self.registry.default.info if self.registry is not None else None

    @property
    def engine(self) -> EngineLike | None:
        """Return the default model's engine while it is loaded."""
        loaded = self.registry.default.loaded if self.registry is not None else None
        return loaded.engine if loaded is not None else None

    @property
    def pipeline(self) -> EmbeddingPipeline | None:
        """Return the default model's pipeline while it is loaded."""
        loaded = self.registry.default.loaded if self.registry is not None else None
        return loaded.pipeline if loaded is not None else None

    def ready(self) -> tuple[EmbeddingPipeline, ModelInfo] | None:
        """Return the default model's pipeline and info when requests can be served: every model loaded at
        start serves (its engine running), and the process is not loading, failed or draining."""
        registry = self.registry
        if self.status is not Status.OK or registry is None or not registry.all_ready():
            return None
        pipeline, info = self.pipeline, self.info
        return (pipeline, info) if pipeline is not None and info is not None else None

    def served(self) -> list[ServedModel]:
        """Return the served models (none before the lifespan built them)."""
        return self.registry.models if self.registry is not None else []

    def mark_ready(self) -> None:
        """Loading is done: serve, unless a drain began meanwhile."""
        if self.status is Status.LOADING:
            self.status, self.reason = Status.OK, None

    def start_draining(self) -> None:
        """Refuse new work from now on: /health and new /v1 requests answer 503."""
        self.status, self.reason = Status.DRAINING, DRAINING_REASON

    def reported_status(self) -> str:
        """Return the status /health reports for this process: `ok` only while it can serve."""
        if self.ready() is not None:
            return Status.OK.value
        return self.status.value if self.status is not Status.OK else "unavailable"

    def notice(self, index: int) -> WorkerNotice:
        """Return what this worker publishes on the pod's notice board."""
        values, depths = self._load()
        device = self.info.device if self.info is not None else self.settings.device
        return WorkerNotice(os.getpid(), index, self.reported_status(), device, gauges=values, queue_depth=depths)

    def _load(self) -> tuple[dict[str, float], dict[str, float]]:
        """Return this process's load gauges by metric name, and its queue depths by queue."""
        values = {
            "clip_requests_in_flight": float(self.requests.count),
            "clip_admitted_items": float(self.admission.current),
            "clip_admitted_items_limit": float(self.admission.limit),
        }
        if self.cache is not None:
            values["clip_cache_entries"] = float(len(self.cache))
        values |= self._state_gauges()
        depths: dict[str, float] = {}
        for model in self.served():
            # An engine process publishes its own queues (the pod's notice board).
            if model.loaded is not None and model.loaded.engine.local:
                for queue in (model.loaded.engine.images, model.loaded.engine.texts):
                    depths[queue.name] = depths.get(queue.name, 0.0) + queue.depth
        return values, depths

    def model_gauges(self) -> Iterator[Metric]:
        """Yield this worker's model gauges (with WORKERS > 1 the rest come from the notice board)."""
        yield from _model_gauges(self.served())

    def unready_reason(self) -> str:
        """Say why this process cannot serve (for /health and the 503 of a request)."""
        if self.reason:
            return self.reason
        engine = self.engine
        if engine is not None and not engine.alive:
            return engine.unavailable_reason()  # "engine stopped", or which engine process the pod waits for
        registry = self.registry
        return (registry.why_not_ready() if registry is not None else None) or self.status.value

    def _state_gauges(self) -> dict[str, float]:
        if self.state is None:
            return {}
        return {"clip_shared_state_up": 1.0 if self.state_up else 0.0}

    def gauges(self) -> Iterator[Metric]:
        """Yield the metrics read at scrape time: readiness, queues, cache, model, GPU memory."""
        yield gauge(
            "clip_ready",
            "1 while /health answers 200 (model warm, engine alive, not draining, the shared store answering)",
            1.0 if self.ready() is not None and self.state_up else 0.0,
        )
        values, depths = self._load()
        for name, documentation in _LOAD_GAUGES.items():
            if name in values:
                yield gauge(name, documentation, values[name])
        if "clip_shared_state_up" in values:
            yield gauge("clip_shared_state_up", STATE_UP_HELP, values["clip_shared_state_up"])
        if depths:
            yield labelled_gauge("clip_queue_depth", "Items waiting for a forward pass, by queue", "queue", depths)
        if self.load_seconds is not None:
            yield gauge("clip_model_load_seconds", "Seconds the model took to load and warm up", self.load_seconds)
        yield from _model_gauges(self.served())


def _model_gauges(models: list[ServedModel]) -> Iterator[Metric]:
    """Yield the gauges of the served models: which are loaded, their memory and queues, and the device's memory."""
    if not models:
        return
    family = GaugeMetricFamily(
        "clip_model_info", "The loaded model (value is always 1)", labels=["model", "pretrained", "device", "dtype"]
    )
    loaded = GaugeMetricFamily(
        "clip_model_loaded", "1 while the model is loaded and serving, by model", labels=["model"]
    )
    memory = GaugeMetricFamily(
        "clip_model_memory_bytes", "Bytes of the model's loaded weights (0 when unloaded), by model", labels=["model"]
    )
    depth = GaugeMetricFamily(
        "clip_model_queue_depth", "Items waiting for a forward pass, by model and queue", labels=["model", "queue"]
    )
    for model in models:
        info = model.info
        if info is not None and model.loaded is not None:
            family.add_metric([model.name, info.pretrained, info.device, info.dtype], 1.0)
            for queue in (model.loaded.engine.images, model.loaded.engine.texts):
                depth.add_metric([model.name, queue.name], queue.depth)
        loaded.add_metric([model.name], 1.0 if model.ready else 0.0)
        memory.add_metric([model.name], float(info.memory_bytes if info is not None and model.loaded else 0))
    yield from (family, loaded, memory, depth)
    info = next((model.info for model in models if model.info is not None), None)
    # A worker fed by engine processes must not touch CUDA: it would make a CUDA context of its own.
    local = all(model.loaded.engine.local for model in models if model.loaded is not None)
    if local and info is not None and info.device.startswith("cuda") and torch.cuda.is_available():
        device = torch.device(info.device)
        yield gauge(
            "clip_gpu_memory_allocated_bytes", "GPU memory held by tensors", torch.cuda.memory_allocated(device)
        )
        yield gauge(
            "clip_gpu_memory_reserved_bytes",
            "GPU memory reserved by PyTorch's caching allocator",
            torch.cuda.memory_reserved(device),
        )
