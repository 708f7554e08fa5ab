"""Prometheus metrics of one app: counters and histograms fed as work flows, gauges read at scrape time.

Each app gets its own registry (several apps can live in one process, e.g. in tests); nothing
registers with prometheus_client's global default registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Paths reported as themselves; anything else is "other", so that scanners cannot blow up label sets.
ENDPOINTS = frozenset(
    {
        "/health",
        "/live",
        "/metrics",
        "/v1/embed/image",
        "/v1/embed/image-batch",
        "/v1/embed/image-upload",
        "/v1/embed/text",
        "/v1/embed/text-batch",
        "/v1/embeddings",
        "/v1/models",
    }
)
STATE_FAILURES_HELP = "Calls to the shared store that failed (timeouts, connection errors), all pieces"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def endpoint_label(path: str) -> str:
    """Return the endpoint label of a request path."""
    return path if path in ENDPOINTS else "other"


class Metrics:
    """The service's instruments, registered in a registry of their own."""

    def __init__(self, pod_gauges: Callable[[], Iterable[Metric]] | None = None) -> None:
        self._pod_gauges = pod_gauges
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: they double the output and nobody graphs them
        self.registry = CollectorRegistry(auto_describe=True)
        self._readers: list[_Gauges] = []
        r = self.registry
        self.requests = Counter(
            "clip_http_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "clip_request_duration_seconds",
            "Total time to answer a request, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "clip_stage_duration_seconds",
            "Time spent per item in one stage: download, decode (with preprocess), queue_wait, forward (per batch)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "clip_batch_size", "Items per forward pass, by queue", ["queue"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.embeddings = Counter(
            "clip_embeddings", "Vectors answered (computed or cached), by kind", ["kind"], registry=r
        )
        self.errors = Counter(
            "clip_errors",
            "Errors reported to callers (request errors and failed batch items), by code",
            ["code"],
            registry=r,
        )
        self.download_bytes = Counter("clip_download_bytes", "Image bytes downloaded", registry=r)
        self.cache_hits = Counter("clip_cache_hits", "Embedding cache hits, by kind", ["kind"], registry=r)
        self.cache_misses = Counter("clip_cache_misses", "Embedding cache misses, by kind", ["kind"], registry=r)
        self.dropped_items = Counter(
            "clip_dropped_items",
            "Items dropped before the model: caller gone (cancelled) or deadline passed (deadline)",
            ["reason"],
            registry=r,
        )
        self.oom = Counter(
            "clip_oom_events", "Out-of-accelerator-memory errors caught (each one splits or fails a batch)", registry=r
        )
        # The same work again by model (MODELS): the families above stay as they were, the pod's totals.
        self.model_embeddings = Counter(
            "clip_model_embeddings",
            "Vectors answered (computed or cached), by model and kind",
            ["model", "kind"],
            registry=r,
        )
        self.model_batch_size = Histogram(
            "clip_model_batch_size",
            "Items per forward pass, by model and queue",
            ["model", "queue"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.model_forward_seconds = Histogram(
            "clip_model_forward_seconds",
            "Time of one forward pass (a batch), by model and queue",
            ["model", "queue"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_loads = Counter(
            "clip_model_loads",
            "Model loads (at start, on first use, after an idle unload), by model and outcome (loaded, failed)",
            ["model", "outcome"],
            registry=r,
        )
        # Every series of a known label exists from the start at 0, so that rates and alerts see it before
        # its first event (Prometheus' advice: a series that appears later hides its first increase).
        for kind in ("image", "text"):
            for counter in (self.embeddings, self.cache_hits, self.cache_misses):
                counter.labels(kind)
        for reason in ("cancelled", "deadline"):
            self.dropped_items.labels(reason)

    def add_model(self, name: str) -> None:
        """Start the series of a served model at 0 (see above)."""
        for kind in ("image", "text"):
            self.model_embeddings.labels(name, kind)
        for outcome in ("loaded", "failed"):
            self.model_loads.labels(name, outcome)

    # The engine's QueueObserver.
    def dispatched(self, queue: str, waits_s: list[float]) -> None:
        histogram = self.stage_seconds.labels("queue_wait")
        for wait in waits_s:
            histogram.observe(wait)

    def dropped(self, queue: str, reason: str, count: int) -> None:
        self.dropped_items.labels(reason).inc(count)

    def count_state_failures(self) -> Callable[[], None]:
        """Create the shared store's failure counter (STATE_URL); return what counts one failure.

        A counter of this process (with WORKERS > 1, summed from every worker's file, the dead ones' included),
        so that the pod's total never drops when a worker is replaced.
        """
        counter = Counter("clip_shared_state_failures", STATE_FAILURES_HELP, registry=self.registry)
        return counter.inc

    def add_gauges(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Register a function whose metric families are read at every scrape."""
        collector = _Gauges(read)
        self._readers.append(collector)
        self.registry.register(collector)

    def render(self) -> bytes:
        """Return the text exposition of every metric: the pod's, with WORKERS > 1."""
        if self._pod_gauges is None:
            return generate_latest(self.registry)
        # Counters and histograms of every worker, summed from their files (prometheus_client's
        # multiprocess mode), the pod's gauges from the notice board, and this worker's model gauges.
        pod = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(pod)  # type: ignore[no-untyped-call]
        pod.register(_Gauges(self._pod_gauges))
        for collector in self._readers:
            pod.register(collector)
        return generate_latest(pod)


class _Gauges(Collector):
    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._read()

    def describe(self) -> Iterable[Metric]:
        return []


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """Return an unlabelled gauge family holding `value`."""
    return GaugeMetricFamily(name, documentation, value=value)


def labelled_gauge(name: str, documentation: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    """Return a gauge family with one sample per label value."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family
