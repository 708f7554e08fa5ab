"""WORKERS > 1: that many server processes on one port, supervised by gunicorn's arbiter.

The supervisor never loads torch: each worker, forked from it, builds its own app (event loop, decode
pool, engine, model replica on GPU `index mod visible GPUs`). SIGTERM drains every worker as the single
process drains; a worker that dies is replaced and counted; /health and /metrics describe the whole pod
through the notice board (app.ops.pod) and prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger
from uvicorn._compat import asyncio_run
from uvicorn_worker import UvicornWorker

if TYPE_CHECKING:
    from gunicorn.config import Config as GunicornConfig

    from app.main import EmbedderFactory
    from app.ops.lifecycle import Lifecycle
    from app.ops.pod import PodBoard
    from app.settings import Settings

log = logging.getLogger("app.ops.workers")

# Seconds a worker's event loop may go without a heartbeat before the supervisor replaces it.
HEARTBEAT_TIMEOUT_S = 120
# Beyond SHUTDOWN_GRACE_S, what a worker's own shutdown may take before the supervisor kills it.
STOP_MARGIN_S = 10


def device_for_worker(requested: str, index: int, gpu_count: int) -> str:
    """Return the device of worker `index`: GPU `index mod gpu_count` when CUDA is asked for or found."""
    if requested == "cpu" or requested.startswith("cuda:") or gpu_count == 0:
        return requested
    return f"cuda:{index % gpu_count}"


class _RootLogs(GunicornLogger):  # type: ignore[misc]  # gunicorn ships no type information
    """gunicorn's messages through the service's own logging (JSON lines), with no handlers of its own."""

    def setup(self, cfg: GunicornConfig) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers = []
            logger.propagate = True
        self.access_log.disabled = True  # ObserveMiddleware logs every request


class PodSupervisor(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type information
    """The arbiter's application: configuration, the workers' slots, and the notice board."""

    def __init__(self, settings: Settings, folder: Path, embedder_factory: EmbedderFactory | None) -> None:
        from app.ops.pod import PodBoard

        self.settings = settings
        self.embedder_factory = embedder_factory
        self.board: PodBoard = PodBoard(folder, settings.workers)
        self._slots: set[int] = set()
        self._stopping = False
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        host = s.resolved_host
        options: dict[str, object] = {
            "bind": f"[{host}]:{s.port}" if ":" in host else f"{host}:{s.port}",
            "workers": s.workers,
            "worker_class": f"{__name__}.ServiceWorker",
            "graceful_timeout": math.ceil(s.shutdown_grace_s) + STOP_MARGIN_S,
            "timeout": HEARTBEAT_TIMEOUT_S,
            "logger_class": f"{__name__}._RootLogs",
            "loglevel": s.log_level,
            "proc_name": "clip-pod",
            "control_socket_disable": True,
            "pre_fork": self._pre_fork,
            "child_exit": self._child_exit,
            "on_exit": self._on_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> None:
        """Build nothing here: each worker builds its own app after the fork."""
        return

    def _pre_fork(self, arbiter: Arbiter, worker: ServiceWorker) -> None:
        worker.index = min(set(range(len(self._slots) + 1)) - self._slots)
        self._slots.add(worker.index)

    def _child_exit(self, arbiter: Arbiter, worker: ServiceWorker) -> None:
        from prometheus_client import multiprocess

        self._slots.discard(worker.index)
        self.board.withdraw(worker.pid)
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
        if arbiter.LISTENERS:  # emptied when the arbiter stops: an exit then is a planned one
            restarts = self.board.count_restart()
            log.error(
                "worker %d (pid %d) died; starting a replacement (%d replaced so far)",
                worker.index,
                worker.pid,
                restarts,
                extra={"worker": worker.index, "pid": worker.pid, "restarts": restarts},
            )

    def _on_exit(self, arbiter: Arbiter) -> None:
        log.info("all workers stopped")


class ServiceWorker(UvicornWorker):  # type: ignore[misc]  # gunicorn ships no type information
    """One server process: the service's app and draining server on the arbiter's sockets."""

    index = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's errors go through the service's logging; its access log stays off, as in one process
        # (ObserveMiddleware logs every request): uvicorn writes it whenever that logger has a handler.
        errors = logging.getLogger("uvicorn.error")
        errors.handlers = []
        errors.propagate = True
        access = logging.getLogger("uvicorn.access")
        access.handlers = []
        access.propagate = False
        self.config.access_log = False

    def load_wsgi(self) -> None:
        """Build nothing yet: the app is made in run(), in this process."""
        self.wsgi = None

    def run(self) -> None:
        exit_code = asyncio_run(self._serve_pod(), loop_factory=self.config.get_loop_factory())
        if exit_code:
            sys.exit(exit_code)

    async def _serve_pod(self) -> int:
        import torch

        from app.inference.loading import load_clip
        from app.main import create_app
        from app.ops.heap import settle_heap
        from app.ops.lifecycle import DrainingServer, Lifecycle

        supervisor: PodSupervisor = self.app
        settings = supervisor.settings
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        device = device_for_worker(settings.device, self.index, gpus)
        settings = settings.model_copy(update={"device": device})
        failed = False

        def on_fatal(reason: str) -> None:
            nonlocal failed
            failed = True
            server.should_exit = True

        lifecycle = Lifecycle()
        app = create_app(
            settings,
            embedder_factory=supervisor.embedder_factory or load_clip,
            on_fatal=on_fatal,
            on_ready=settle_heap,
            lifecycle=lifecycle,
            pod=supervisor.board,
        )
        self.config.app = app
        server = DrainingServer(self.config, lifecycle, grace_s=settings.shutdown_grace_s)
        self._install_sigquit_handler()
        publisher = asyncio.create_task(_publish(supervisor.board, lifecycle, self.index, device))
        try:
            await server.serve(sockets=self.sockets)
        finally:
            publisher.cancel()
            supervisor.board.withdraw(os.getpid())
        # The model could not load: the same would happen on every restart, so stop the pod.
        return Arbiter.WORKER_BOOT_ERROR if failed or not server.started else 0


async def _publish(board: PodBoard, lifecycle: Lifecycle, index: int, device: str) -> None:
    from app.ops.pod import PUBLISH_EVERY_S, WorkerNotice

    while True:
        services = lifecycle.services
        notice = WorkerNotice(pid=os.getpid(), index=index, status="loading", device=device)
        if services is not None:
            notice = services.notice(index)
        board.publish(notice)
        await asyncio.sleep(PUBLISH_EVERY_S)


def run_pod(settings: Settings, embedder_factory: EmbedderFactory | None = None) -> int:
    """Run `settings.workers` server processes on one port until SIGTERM; return the exit code.

    `embedder_factory` is the model seam (benchmarks); by default each worker loads the configured model.
    """
    folder = Path(tempfile.mkdtemp(prefix="clip-pod-"))
    metrics_dir = folder / "prometheus"
    metrics_dir.mkdir()
    # Read by prometheus_client as it is imported: the workers, forked after this, count into files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    log.info("starting %d workers on %s:%d", settings.workers, settings.resolved_host, settings.port)
    try:
        PodSupervisor(settings, folder, embedder_factory).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        # A worker that could not boot (the model failed to load) stops the pod, as it stops one process.
        return 1 if code in (Arbiter.WORKER_BOOT_ERROR, Arbiter.APP_LOAD_ERROR) else code
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0
