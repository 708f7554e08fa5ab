"""The objects one running app owns, built in the lifespan and reached through dependencies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from prometheus_client.core import GaugeMetricFamily, Metric

from app.auth.verify import RequestVerifier
from app.inference.cache import EmbeddingCache
from app.inference.engine import Engine
from app.inference.model import ModelInfo
from app.ops.admission import Admission, RequestTracker
from app.ops.metrics import Metrics, gauge, labelled_gauge
from app.pipeline import EmbeddingPipeline
from app.settings import Settings

DRAINING_REASON = "draining: the server is shutting down"


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
    info: ModelInfo | None = None
    load_seconds: float | None = None
    engine: Engine | None = None
    pipeline: EmbeddingPipeline | None = None

    @classmethod
    def create(cls, settings: Settings, verifier: RequestVerifier) -> Services:
        """Build the services of one app, with its metrics, admission bound and cache."""
        cache = EmbeddingCache(settings.cache_max_entries) if settings.cache_max_entries > 0 else None
        services = cls(settings, verifier, admission=Admission(settings.max_queued_items), cache=cache)
        services.metrics.add_gauges(services.gauges)
        return services

    def ready(self) -> tuple[EmbeddingPipeline, ModelInfo] | None:
        """Return the pipeline and model info when requests can be served."""
        engine_ok = self.engine is not None and self.engine.alive
        if self.status is Status.OK and engine_ok and self.pipeline and self.info:
            return self.pipeline, self.info
        return None

    def mark_ready(self) -> None:
        """Loading is done: serve, unless a drain began meanwhile."""
        if self.status is Status.LOADING:
            self.status, self.reason = Status.OK, None

    def start_draining(self) -> None:
        """Refuse new work from now on: /health and new /v1 requests answer 503."""
        self.status, self.reason = Status.DRAINING, DRAINING_REASON

    def gauges(self) -> Iterator[Metric]:
        """Yield the metrics read at scrape time: readiness, queues, cache, model, GPU memory."""
        yield gauge(
            "clip_ready",
            "1 while /health answers 200 (model warm, engine alive, not draining)",
            1.0 if self.ready() is not None else 0.0,
        )
        yield gauge("clip_requests_in_flight", "/v1 requests being answered", self.requests.count)
        yield gauge("clip_admitted_items", "Images and texts admitted and not yet answered", self.admission.current)
        yield gauge("clip_admitted_items_limit", "MAX_QUEUED_ITEMS", self.admission.limit)
        if self.cache is not None:
            yield gauge("clip_cache_entries", "Vectors held by the embedding cache", len(self.cache))
        if self.engine is not None:
            depths = {q.name: float(q.depth) for q in (self.engine.images, self.engine.texts)}
            yield labelled_gauge("clip_queue_depth", "Items waiting for a forward pass, by queue", "queue", depths)
        if self.load_seconds is not None:
            yield gauge("clip_model_load_seconds", "Seconds the model took to load and warm up", self.load_seconds)
        if self.info is not None:
            yield from _model_gauges(self.info)


def _model_gauges(info: ModelInfo) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "clip_model_info", "The loaded model (value is always 1)", labels=["model", "pretrained", "device", "dtype"]
    )
    family.add_metric([info.model, info.pretrained, info.device, info.dtype], 1.0)
    yield family
    if info.device.startswith("cuda") and torch.cuda.is_available():
        device = torch.device(info.device)
        yield gauge(
            "clip_gpu_memory_allocated_bytes", "GPU memory held by tensors", torch.cuda.memory_allocated(device)
        )
        yield gauge(
            "clip_gpu_memory_reserved_bytes",
            "GPU memory reserved by PyTorch's caching allocator",
            torch.cuda.memory_reserved(device),
        )
