"""The pod's supervisor (WORKERS > 1): gunicorn's arbiter, its configuration, and the pod's exit code.

The supervisor accepts every connection and hands it to a worker (app.ops.dealer): no worker listens.

gunicorn forks each worker inside the arbiter's main loop, so a worker leaves through this module's
stack too (its `SystemExit` comes out of `Arbiter.run`): only the supervisor's own process maps exit
codes and removes the pod's folder.

Signals: SIGTERM, SIGINT and SIGQUIT to the supervisor drain every worker (each gets SIGTERM; gunicorn's
own SIGINT and SIGQUIT would stop them at once); another one while they drain stops them at once (each
gets SIGQUIT). A worker ignores SIGINT: a Ctrl+C reaches every process of the terminal's group, and the
supervisor forwards it. A worker that gets SIGTERM while the pod goes on leaves alone (app.ops.lifecycle).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.glogging import Logger as GunicornLogger

from app.engine.supervise import engine_devices
from app.ops.dealer import Dealer
from app.ops.exits import ExitCode
from app.ops.podfolder import METRICS_SUBFOLDER, make_pod_folder, shrink_metric_files
from app.ops.workers import HEARTBEAT_TIMEOUT_S, STOP_MARGIN_S

if TYPE_CHECKING:
    from gunicorn.config import Config as GunicornConfig

    from app.engine.supervise import EngineSet
    from app.main import EmbedderFactory
    from app.ops.pod import PodBoard
    from app.ops.workers import ServiceWorker
    from app.settings import Settings

log = logging.getLogger("app.ops.supervisor")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
# A worker's exit status that stops the pod (gunicorn halts on these two), and the pod's exit code for it.
_HALTS = {Arbiter.WORKER_BOOT_ERROR: ExitCode.START_FAILED, Arbiter.APP_LOAD_ERROR: ExitCode.BAD_SETUP}


class _RootLogs(GunicornLogger):  # type: ignore[misc]  # gunicorn ships no type information
    """gunicorn's messages through the service's own logging (JSON lines), with no handlers of its own."""

    def setup(self, cfg: GunicornConfig) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers = []
            logger.propagate = True
        self.access_log.disabled = True  # ObserveMiddleware logs every request


class _PodArbiter(Arbiter):  # type: ignore[misc]  # gunicorn ships no type information
    """gunicorn's arbiter whose every stop signal drains, and whose second one stops at once."""

    def __init__(self, app: PodSupervisor) -> None:
        super().__init__(app)
        self._stopping = False
        self._halting = False

    def signal(self, sig: int, frame: FrameType | None) -> None:
        # The signal handler: it only queues (no logging), except for the second stop signal, which cannot
        # wait for the main loop: that loop is inside stop(), waiting for the workers to drain.
        if sig in STOP_SIGNALS:
            if self._stopping:
                self.kill_workers(signal.SIGQUIT)
                return
            self._stopping = True
            sig = signal.SIGTERM  # handle_term: stop() sends SIGTERM, and every worker drains
        super().signal(sig, frame)

    def manage_workers(self) -> None:
        if self.app.engines is not None:
            self.app.engines.watch()  # replaces the dead; raises HaltServer for one that never started
        super().manage_workers()

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        # Before stop() signals the workers: each one drains as one process does, its listener open (503s),
        # rather than as a worker leaving alone, which closes its listener first (app.ops.lifecycle).
        self.app.board.mark_stopping()
        self._halting = True
        super().halt(reason, exit_status)

    def reap_workers(self) -> None:
        # The engine processes first: gunicorn's waitpid(-1) would take their exit status and drop it.
        if self.app.engines is not None:
            self.app.engines.reap()
        # Every worker that cannot load the model fails to boot at about the same time: the first one halts
        # the pod, and gunicorn's stop() would raise again, uncaught, as it reaps the next one.
        while True:
            try:
                super().reap_workers()
                return
            except HaltServer:
                if not self._halting:
                    raise

    def spawn_worker(self) -> int:
        # In the new worker, super() does not return: the worker leaves by SystemExit.
        with self.app.dealer.forking():
            pid: int = super().spawn_worker()
            self.app.dealer.adopt(pid)
        return pid


class PodSupervisor(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type information
    """The arbiter's application: configuration, the workers' slots, and the notice board."""

    def __init__(
        self,
        settings: Settings,
        folder: Path,
        embedder_factory: EmbedderFactory | None,
        engine_devices: list[str] | None = None,
    ) -> None:
        from app.ops.pod import PodBoard

        self.settings = settings
        self.embedder_factory = embedder_factory
        devices = engine_devices or []
        self.board: PodBoard = PodBoard(folder, settings.workers, engines=len(devices))
        self.engines: EngineSet | None = None  # ENGINE_PROCESS: the model runs there, not in the workers
        if devices:
            from app.engine.supervise import EngineSet, factory_reference

            self.engines = EngineSet(settings, folder, self.board, devices, factory_reference(embedder_factory))
        self._metrics_dir = folder / METRICS_SUBFOLDER
        self._slots: set[int] = set()
        self.dealer = Dealer()
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        host = s.resolved_host
        options: dict[str, object] = {
            "bind": f"[{host}]:{s.port}" if ":" in host else f"{host}:{s.port}",
            "workers": s.workers,
            "worker_class": "app.ops.workers.ServiceWorker",
            "graceful_timeout": math.ceil(s.shutdown_grace_s) + STOP_MARGIN_S,
            "timeout": HEARTBEAT_TIMEOUT_S,
            "logger_class": f"{__name__}._RootLogs",
            "loglevel": s.log_level,
            "proc_name": "clip-pod",
            "control_socket_disable": True,
            "when_ready": self._when_ready,
            "pre_fork": self._pre_fork,
            "post_fork": self._post_fork,
            "child_exit": self._child_exit,
            "on_exit": self._on_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> None:
        """Build nothing here: each worker builds its own app after the fork."""
        return

    def run(self) -> None:
        """Run the arbiter until the pod stops; it leaves by SystemExit, in every process."""
        _PodArbiter(self).run()

    def _when_ready(self, arbiter: Arbiter) -> None:
        if self.engines is not None:
            self.engines.start()  # before the workers, which connect to them
        self.dealer.start(listener.sock for listener in arbiter.LISTENERS)

    def _pre_fork(self, arbiter: Arbiter, worker: ServiceWorker) -> None:
        worker.index = min(set(range(len(self._slots) + 1)) - self._slots)
        self._slots.add(worker.index)
        worker.channel = self.dealer.channel_for_fork()

    def _post_fork(self, arbiter: Arbiter, worker: ServiceWorker) -> None:
        # In the new worker: its connections come over its channel; a copy of the listening socket would keep
        # the port open after the supervisor closed it.
        self.dealer.close_in_child()
        for listener in worker.sockets:
            listener.close()
        worker.sockets = []

    def _child_exit(self, arbiter: Arbiter, worker: ServiceWorker) -> None:
        from prometheus_client import multiprocess

        self._slots.discard(worker.index)
        self.dealer.forget(worker.pid)
        self.board.withdraw(worker.pid)
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
        shrink_metric_files(self._metrics_dir, worker.pid)
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
        self.dealer.close()
        log.info("all workers stopped")
        if self.engines is not None:
            # After the workers: their drain needed the engines. Theirs is short: no worker is left to feed them.
            self.engines.stop(self.settings.shutdown_grace_s + STOP_MARGIN_S)


def run_pod(settings: Settings, embedder_factory: EmbedderFactory | None = None) -> int:
    """Run `settings.workers` server processes on one port until a stop signal; return the exit code.

    `embedder_factory` is the model seam (tests, benchmarks); by default each worker loads the configured
    model. Raise StartupError when the pod's folder cannot hold the workers' metrics.
    """
    devices = engine_devices(settings.device) if settings.engine_process_on() else []
    folder = make_pod_folder(settings.workers + len(devices))
    supervisor = os.getpid()
    # Read by prometheus_client as it is imported: the workers, forked after this, count into files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder / METRICS_SUBFOLDER)
    log.info("starting %d workers on %s:%d", settings.workers, settings.resolved_host, settings.port)
    pod: PodSupervisor | None = None
    try:
        pod = PodSupervisor(settings, folder, embedder_factory, devices)
        pod.run()
    except SystemExit as exc:
        if os.getpid() != supervisor:
            raise  # a worker leaving: its own exit status, and nothing of the pod's to clean up
        code = (
            exc.code if isinstance(exc.code, int) else ExitCode.STOPPED if exc.code is None else ExitCode.START_FAILED
        )
        # A worker that could not boot stops the pod, as one process stops: the same would happen on a restart.
        return _HALTS.get(code, code)
    finally:
        if os.getpid() == supervisor:
            if pod is not None and pod.engines is not None:
                pod.engines.stop(0)  # only those left running by an arbiter that failed
            shutil.rmtree(folder, ignore_errors=True)
    return ExitCode.STOPPED
