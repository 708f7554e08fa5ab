"""The workers' shared notice board (WORKERS > 1): one JSON file per worker in a folder the supervisor made.

Each worker publishes its status, device and gauges a few times a second; whichever worker answers
/health or /metrics reads every file, so that both describe the whole pod rather than one process. The
supervisor removes a dead worker's file and counts the replacements in `supervisor.json`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from app.engine.board import EngineBoard, EngineNotice

# A worker whose last notice is older than this is taken as hung: the pod is not ready.
STALE_AFTER_S = 5.0
# How often a worker publishes its notice.
PUBLISH_EVERY_S = 0.25
SUPERVISOR_FILE = "supervisor.json"
# Gauges summed over the workers (the rest of a worker's gauges describe the model and are the same).
STATE_UP_HELP = "1 while the shared store (STATE_URL) answers, 0 while it is unreachable"
SUMMED_GAUGES = {
    "clip_requests_in_flight": "/v1 requests being answered, all workers",
    "clip_admitted_items": "Images and texts admitted and not yet answered, all workers",
    "clip_admitted_items_limit": "MAX_QUEUED_ITEMS times the workers running",
    "clip_cache_entries": "Vectors held by the workers' in-process caches, all workers",
}


# A notice's status while the worker serves (app.services.Status.OK); any other is the worker's phase.
READY = "ok"


def _phase(status: str) -> str:
    return "serving" if status == READY else status


@dataclass(slots=True)
class WorkerNotice:
    """What one worker says of itself."""

    pid: int
    index: int
    status: str
    device: str | None = None
    updated: float = 0.0
    gauges: dict[str, float] = field(default_factory=dict)
    queue_depth: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class PodSummary:
    """The pod as /health shows it."""

    expected: int
    notices: list[WorkerNotice]
    restarts: int
    engines: list[EngineNotice] = field(default_factory=list)  # ENGINE_PROCESS: the engine processes
    expected_engines: int = 0
    engine_restarts: int = 0

    @property
    def ready(self) -> int:
        """Count the workers that are ready and have spoken recently."""
        return sum(1 for n in self.notices if n.status == READY)

    @property
    def all_ready(self) -> bool:
        """Say whether every expected worker, and engine process, is ready."""
        return self.ready >= self.expected and sum(e.ready for e in self.engines) >= self.expected_engines

    def missing(self) -> str:
        """Say which part of the pod is not ready: workers first, then engine processes."""
        if self.ready < self.expected:
            return f"{self.ready} of {self.expected} workers ready"
        engines = sum(e.ready for e in self.engines)
        return f"{engines} of {self.expected_engines} engine processes ready"

    @property
    def devices(self) -> list[str]:
        """Return the devices the workers (or the engine processes) run on, each once, in order."""
        devices = {n.device for n in self.notices if n.device} | {e.device for e in self.engines}
        return sorted(devices)

    def to_json(self) -> dict[str, object]:
        """Return the pod part of /health's body."""
        engines = {"engines": [e.to_json() for e in self.engines], "engine_restarts": self.engine_restarts}
        return (engines if self.expected_engines else {}) | {
            "expected": self.expected,
            "ready": self.ready,
            "restarts": self.restarts,
            # `ready` and `phase`, not `status`: only the top level of /health says `status`.
            "workers": [
                {
                    "index": n.index,
                    "pid": n.pid,
                    "ready": n.status == READY,
                    "phase": _phase(n.status),
                    "device": n.device,
                }
                for n in self.notices
            ],
        }


class PodBoard:
    """Read and write the notices in one folder."""

    def __init__(self, folder: Path, expected: int, engines: int = 0) -> None:
        from app.engine.board import EngineBoard

        self.folder = folder
        self.expected = expected
        self.engines: EngineBoard = EngineBoard(folder, engines)

    def publish(self, notice: WorkerNotice) -> None:
        """Replace this worker's notice atomically (a reader never sees half a file)."""
        notice.updated = time.time()
        path = self._path(notice.pid)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(notice)))
        os.replace(partial, path)

    def withdraw(self, pid: int) -> None:
        """Remove a worker's notice (it exited)."""
        self._path(pid).unlink(missing_ok=True)

    def count_restart(self, key: str = "restarts") -> int:
        """Count one worker (or, with key="engine_restarts", one engine process) replaced; return the total so far."""
        restarts = self._restarts(key) + 1
        self._write_supervisor(**{key: restarts})
        return restarts

    def mark_stopping(self) -> None:
        """Say that the whole pod stops (the supervisor, before it signals the workers)."""
        self._write_supervisor(stopping=True)

    def stopping(self) -> bool:
        """Say whether the whole pod stops, rather than one worker alone."""
        return bool(self._supervisor().get("stopping", False))

    def summary(self, now: float | None = None) -> PodSummary:
        """Read every notice; a stale one counts as a hung worker."""
        now = time.time() if now is None else now
        notices = []
        for path in sorted(self.folder.glob("worker-*.json")):
            try:
                notice = WorkerNotice(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # removed or replaced while being read
            if now - notice.updated > STALE_AFTER_S and notice.status == READY:
                notice.status = "unresponsive"
            notices.append(notice)
        notices.sort(key=lambda n: n.index)
        engines = self.engines.notices(now)
        restarts = self._restarts("engine_restarts")
        return PodSummary(self.expected, notices, self._restarts(), engines, self.engines.expected, restarts)

    def metrics(self) -> Iterator[Metric]:
        """Yield the pod's gauges: workers, their readiness, and the per-worker gauges summed."""
        pod = self.summary()
        up = [n.gauges["clip_shared_state_up"] for n in pod.notices if "clip_shared_state_up" in n.gauges]
        ready = pod.all_ready and min(up, default=1.0) == 1.0
        if self.engines.expected:
            yield from self.engines.metrics(pod.engine_restarts)
        yield GaugeMetricFamily("clip_workers", "Worker processes configured (WORKERS)", value=pod.expected)
        yield GaugeMetricFamily("clip_workers_ready", "Worker processes ready to serve", value=pod.ready)
        yield CounterMetricFamily(
            "clip_worker_restarts", "Worker processes that died and were replaced", value=pod.restarts
        )
        yield GaugeMetricFamily(
            "clip_ready",
            "1 while /health answers 200 (every worker and engine process ready, the shared store answering)",
            value=float(ready),
        )
        for name, documentation in SUMMED_GAUGES.items():
            values = [n.gauges[name] for n in pod.notices if name in n.gauges]
            if values:
                yield GaugeMetricFamily(name, documentation, value=sum(values))
        if up:
            yield GaugeMetricFamily("clip_shared_state_up", STATE_UP_HELP, value=min(up))
        depth = GaugeMetricFamily("clip_queue_depth", "Items waiting for a forward pass, by queue", labels=["queue"])
        totals = self.engines.queue_depths()
        for notice in pod.notices:
            for queue, value in notice.queue_depth.items():
                totals[queue] = totals.get(queue, 0.0) + value
        for queue, value in sorted(totals.items()):
            depth.add_metric([queue], value)
        yield depth

    def _path(self, pid: int) -> Path:
        return self.folder / f"worker-{pid}.json"

    def _restarts(self, key: str = "restarts") -> int:
        restarts = self._supervisor().get(key, 0)
        return restarts if isinstance(restarts, int) else 0

    def _supervisor(self) -> dict[str, object]:
        try:
            said = json.loads((self.folder / SUPERVISOR_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return said if isinstance(said, dict) else {}

    def _write_supervisor(self, **changes: object) -> None:
        path = self.folder / SUPERVISOR_FILE
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(self._supervisor() | changes))
        os.replace(partial, path)
