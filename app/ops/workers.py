"""WORKERS > 1: one server process of the pod, forked by the supervisor (app.ops.supervisor).

The supervisor never loads torch: each worker builds its own app (event loop, decode pool, engine, model
replica on GPU `index mod visible GPUs`) and publishes its state on the notice board (app.ops.pod), so
that /health and /metrics describe the whole pod. A worker that starts while another one is ready (it
replaces one that died) is handed connections (app.ops.dealer) only once its model is loaded, so that
no request meets a worker that would answer 503 while another one could serve it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from gunicorn.arbiter import Arbiter
from uvicorn._compat import asyncio_run
from uvicorn_worker import UvicornWorker

from app.ops.exits import StartupError
from app.ops.podfolder import reserve_metric_files

if TYPE_CHECKING:
    from app.ops.lifecycle import Lifecycle
    from app.ops.pod import PodBoard
    from app.ops.supervisor import PodSupervisor

log = logging.getLogger("app.ops.workers")

# Seconds a worker may go without a heartbeat before the supervisor replaces it.
HEARTBEAT_TIMEOUT_S = 120
# How often a worker beats: from its start, so that a model loading before the worker serves (which can
# take longer than the timeout) is not taken for a hung worker; the beat stops when the event loop does.
HEARTBEAT_EVERY_S = 5.0
# Beyond SHUTDOWN_GRACE_S, what a worker's own shutdown may take before the supervisor kills it.
STOP_MARGIN_S = 10


def device_for_worker(requested: str, index: int, gpu_count: int) -> str:
    """Return the device of worker `index`: GPU `index mod gpu_count` when CUDA is asked for or found."""
    if requested == "cpu" or requested.startswith("cuda:") or gpu_count == 0:
        return requested
    return f"cuda:{index % gpu_count}"


class ServiceWorker(UvicornWorker):  # type: ignore[misc]  # gunicorn ships no type information
    """One server process: the service's app and draining server, on the connections the supervisor hands it."""

    index = 0
    channel: socket.socket | None = None  # this worker's end of the dealer's channel (app.ops.dealer)

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

    def init_signals(self) -> None:
        super().init_signals()
        # A Ctrl+C reaches every process of the terminal's group, and the supervisor forwards it as SIGTERM:
        # a worker that took it as well would see that SIGTERM as a second signal, and stop without draining.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Until the server takes it over: a worker still booting has nothing to drain (and no core to dump).
        signal.signal(signal.SIGQUIT, _exit_at_once)

    def load_wsgi(self) -> None:
        """Build nothing yet: the app is made in run(), in this process."""
        self.wsgi = None

    def run(self) -> None:
        try:
            reserve_metric_files(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), os.getpid())
        except StartupError as exc:
            log.error("%s", exc.message)
            sys.exit(Arbiter.APP_LOAD_ERROR)  # stops the pod (exit 2): every worker would meet the same disk
        exit_code = asyncio_run(self._serve_pod(), loop_factory=self.config.get_loop_factory())
        if exit_code:
            sys.exit(exit_code)

    async def _serve_pod(self) -> int:
        import torch

        from app.inference.loading import load_clip
        from app.main import create_app
        from app.ops.heap import settle_heap
        from app.ops.intake import HandedServer
        from app.ops.lifecycle import Lifecycle

        supervisor: PodSupervisor = self.app
        board = supervisor.board
        settings = supervisor.settings
        opener = None
        if supervisor.engines is not None:
            # The model runs in the engine processes: this worker must not touch CUDA (a context of its own).
            from app.engine.client import engine_opener

            opener = engine_opener(supervisor.engines.paths, self.index, settings, board)
            device = "engine"
        else:
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            device = device_for_worker(settings.device, self.index, gpus)
            settings = settings.model_copy(update={"device": device})
        failed = False

        def on_fatal(reason: str) -> None:
            nonlocal failed
            failed = True
            server.stop_now()

        lifecycle = Lifecycle(
            # Another worker ready: this one replaces a worker that died, and waits for its model before serving.
            hold_while_loading=lambda: board.summary().ready > 0,
            # SIGTERM to this worker only (not from the supervisor stopping the pod): the others serve on.
            leaving_alone=lambda: not board.stopping(),
        )
        app = create_app(
            settings,
            embedder_factory=supervisor.embedder_factory or load_clip,
            on_fatal=on_fatal,
            on_ready=settle_heap,
            lifecycle=lifecycle,
            pod=board,
            engine_opener=opener,
        )
        self.config.app = app
        # SIGTERM from the supervisor drains; SIGQUIT is its second stop signal (app.ops.supervisor).
        assert self.channel is not None  # given before the fork (app.ops.supervisor)
        server = HandedServer(
            self.config,
            lifecycle,
            grace_s=settings.shutdown_grace_s,
            channel=self.channel,
            ignored=frozenset({signal.SIGINT}),
            at_once=frozenset({signal.SIGQUIT}),
        )
        background = [
            asyncio.create_task(_publish(board, lifecycle, self.index, device)),
            asyncio.create_task(self._beat()),
        ]
        try:
            await server.serve(sockets=[])
        finally:
            for task in background:
                task.cancel()
            board.withdraw(os.getpid())
        # The model could not load: the same would happen on every restart, so stop the pod.
        return Arbiter.WORKER_BOOT_ERROR if failed or not server.started else 0

    async def _beat(self) -> None:
        while True:
            self.notify()
            await asyncio.sleep(HEARTBEAT_EVERY_S)


def _exit_at_once(sig: int, frame: FrameType | None) -> None:
    os._exit(0)


async def _publish(board: PodBoard, lifecycle: Lifecycle, index: int, device: str) -> None:
    from app.ops.pod import PUBLISH_EVERY_S, WorkerNotice

    while True:
        services = lifecycle.services
        notice = WorkerNotice(pid=os.getpid(), index=index, status="loading", device=device)
        if services is not None:
            notice = services.notice(index)
        board.publish(notice)
        await asyncio.sleep(PUBLISH_EVERY_S)
