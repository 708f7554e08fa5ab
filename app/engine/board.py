"""The engine processes' notices on the pod's board (app.ops.pod): one JSON file per engine, `engine-<index>.json`.

Each engine publishes its status, device, queues and GPU memory a few times a second; the supervisor
reads them to know when an engine is ready or hung, and whichever worker answers /health or /metrics
reads them to describe the whole pod.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.ops.pod import READY, STALE_AFTER_S

# Per-engine gauges the pod sums (an engine per GPU: each one's own GPU memory).
SUMMED_GAUGES = {
    "clip_gpu_memory_allocated_bytes": "GPU memory held by tensors, all engine processes",
    "clip_gpu_memory_reserved_bytes": "GPU memory reserved by PyTorch's caching allocator, all engine processes",
}
QUEUE_STATS = ("batches", "items", "last_batch_size", "max_batch_size_seen")


@dataclass(slots=True)
class EngineNotice:
    """What one engine process says of itself."""

    pid: int
    index: int
    status: str  # loading | ok | draining
    device: str
    updated: float = 0.0
    workers: int = 0  # HTTP workers connected
    queues: dict[str, dict[str, int]] = field(default_factory=dict)  # app.inference.engine.Engine.snapshot()
    gauges: dict[str, float] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == READY

    def to_json(self) -> dict[str, object]:
        """Return the engine's part of /health's `pod.engines`."""
        phase = "serving" if self.ready else self.status
        return {"index": self.index, "pid": self.pid, "ready": self.ready, "phase": phase, "device": self.device}


class EngineBoard:
    """Read and write the engine notices in the pod's folder."""

    def __init__(self, folder: Path, expected: int) -> None:
        self.folder = folder
        self.expected = expected

    def publish(self, notice: EngineNotice) -> None:
        """Replace this engine's notice atomically."""
        notice.updated = time.time()
        path = self._path(notice.index)
        partial = path.with_suffix(f".{notice.pid}.tmp")
        partial.write_text(json.dumps(asdict(notice)))
        os.replace(partial, path)

    def withdraw(self, index: int) -> None:
        """Remove engine `index`'s notice (it exited)."""
        self._path(index).unlink(missing_ok=True)

    def read(self, index: int, now: float | None = None) -> EngineNotice | None:
        """Return engine `index`'s notice; a stale one says `unresponsive`."""
        try:
            notice = EngineNotice(**json.loads(self._path(index).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        now = time.time() if now is None else now
        if now - notice.updated > STALE_AFTER_S and notice.ready:
            notice.status = "unresponsive"
        return notice

    def notices(self, now: float | None = None) -> list[EngineNotice]:
        """Return every engine's notice, by index."""
        found = (self.read(i, now) for i in range(self.expected))
        return [n for n in found if n is not None]

    def queue_stats(self) -> dict[str, dict[str, int]]:
        """Return the engines' queues for /health: depths and batch counts added up, batch sizes the largest."""
        merged: dict[str, dict[str, int]] = {}
        for notice in self.notices():
            for queue, stats in notice.queues.items():
                into = merged.setdefault(queue, dict.fromkeys(("queue_depth", *QUEUE_STATS), 0))
                for key, value in stats.items():
                    if key in ("last_batch_size", "max_batch_size_seen"):
                        into[key] = max(into.get(key, 0), value)
                    else:
                        into[key] = into.get(key, 0) + value
        return merged

    def metrics(self, restarts: int) -> Iterator[Metric]:
        """Yield the engines' gauges: how many, how many ready, their restarts, their GPU memory."""
        notices = self.notices()
        yield GaugeMetricFamily("clip_engines", "Engine processes configured (ENGINE_PROCESS)", value=self.expected)
        yield GaugeMetricFamily(
            "clip_engines_ready", "Engine processes ready to serve", value=sum(n.ready for n in notices)
        )
        yield CounterMetricFamily(
            "clip_engine_restarts", "Engine processes that died and were replaced", value=restarts
        )
        for name, documentation in SUMMED_GAUGES.items():
            values = [n.gauges[name] for n in notices if name in n.gauges]
            if values:
                yield GaugeMetricFamily(name, documentation, value=sum(values))

    def queue_depths(self) -> dict[str, float]:
        """Return the items waiting in every engine, by queue."""
        totals: dict[str, float] = {}
        for notice in self.notices():
            for queue, stats in notice.queues.items():
                totals[queue] = totals.get(queue, 0.0) + stats.get("queue_depth", 0)
        return totals

    def _path(self, index: int) -> Path:
        return self.folder / f"engine-{index}.json"
