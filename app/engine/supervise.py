"""The pod supervisor's side of the engine processes: how many, on which devices; start, watch, replace, stop.

The supervisor never imports torch: the GPUs are counted by a short-lived `python -c` (only for DEVICE
auto or cuda), and each engine is a fresh interpreter (`python -m app.engine`), so that no CUDA state is
ever forked. Engines start before the HTTP workers and stop after them. One that exits before it was
ever ready stops the pod (exit 1, as a model that cannot load does); one that dies later is replaced and
counted (`clip_engine_restarts_total`), its workers' items in flight answered 503 `unavailable`; one
whose notice goes stale for HEARTBEAT_TIMEOUT_S (a hung event loop) is killed and replaced.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gunicorn.errors import HaltServer

from app.ops.exits import ExitCode, StartupError
from app.ops.podfolder import METRICS_SUBFOLDER, shrink_metric_files
from app.ops.workers import HEARTBEAT_TIMEOUT_S  # a notice this old from an engine that was ready: it hangs
from app.settings import Settings

if TYPE_CHECKING:
    from app.engine.board import EngineNotice
    from app.ops.pod import PodBoard  # prometheus_client: not before the supervisor set PROMETHEUS_MULTIPROC_DIR

log = logging.getLogger("app.engine.supervise")

ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `app` package
# Waits before starting a replacement, growing while replacements die young (a broken GPU).
BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
# An engine that served this long resets the backoff.
HEALTHY_AFTER_S = 60.0
_GPU_PROBE = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"


def engine_devices(device: str) -> list[str]:
    """Return one device per engine process: each visible GPU, else the one device asked for (or the CPU)."""
    if device == "cpu" or device.startswith("cuda:"):
        return [device]
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _GPU_PROBE], check=False, capture_output=True, text=True, timeout=120
        )
        count = int(probe.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        count = 0
    return devices_for(device, count)


def devices_for(device: str, gpus: int) -> list[str]:
    """Return the engine processes' devices for DEVICE=`device` on a host with `gpus` visible GPUs."""
    if device == "cpu" or device.startswith("cuda:"):
        return [device]  # one named device: one engine on it
    if gpus == 0:
        return [device]  # auto: the engine falls back to the CPU, with a warning; cuda: it fails to load, saying why
    return [f"cuda:{i}" for i in range(gpus)]


def factory_reference(factory: Callable[..., object] | None) -> str | None:
    """Return `module:function` naming the model seam for the engine processes to import; None for the service's own.

    Raise StartupError when it cannot be imported by name (a lambda, a function of an unnamed script).
    """
    if factory is None:
        return None
    module = factory.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else ""
    name = factory.__qualname__
    if not module or "<" in name or "." in name:
        raise StartupError(
            f"the model seam {name} cannot be imported by an engine process: set ENGINE_PROCESS=off",
            ExitCode.BAD_SETUP,
        )
    return f"{module}:{name}"


@dataclass(slots=True)
class _Engine:
    index: int
    device: str
    path: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready: bool = False  # this process has been ready
    served: bool = False  # an engine of this slot has been ready: a death is replaced, not fatal
    failures: int = 0  # deaths in a row of engines that had not served HEALTHY_AFTER_S
    next_start: float = 0.0


class EngineSet:
    """The pod's engine processes, one per device, each listening on a socket in the pod's folder."""

    def __init__(
        self, settings: Settings, folder: Path, board: PodBoard, devices: list[str], factory: str | None
    ) -> None:
        self._settings = settings
        self._folder = folder
        self._board = board
        self._factory = factory
        self._engines = [_Engine(i, d, str(folder / f"engine-{i}.sock")) for i, d in enumerate(devices)]

    @property
    def paths(self) -> list[str]:
        """Return the engines' sockets, by index."""
        return [e.path for e in self._engines]

    def start(self) -> None:
        """Start every engine (before the workers)."""
        log.info("starting %d engine process(es) on %s", len(self._engines), ", ".join(e.device for e in self._engines))
        for engine in self._engines:
            self._spawn(engine)

    def reap(self) -> None:
        """Collect the exit status of engines that ended (before gunicorn's waitpid(-1) can take it)."""
        for engine in self._engines:
            if engine.process is not None:
                engine.process.poll()

    def watch(self) -> None:
        """Note the engines that became ready; replace the dead and the hung; stop the pod if one never started."""
        now = time.monotonic()
        for engine in self._engines:
            process = engine.process
            if process is None:
                if now >= engine.next_start:
                    self._spawn(engine)
                continue
            if process.poll() is None:
                self._check(engine, process)
                continue
            self._ended(engine, process, now)

    def _check(self, engine: _Engine, process: subprocess.Popen[bytes]) -> None:
        notice = self._note_ready(engine, process)
        if notice is None:
            return
        stale = time.time() - notice.updated
        if engine.ready and stale > HEARTBEAT_TIMEOUT_S:
            log.error("engine process %d (pid %d) silent for %.0f s: killing it", engine.index, process.pid, stale)
            process.kill()

    def _note_ready(self, engine: _Engine, process: subprocess.Popen[bytes]) -> EngineNotice | None:
        notice = self._board.engines.read(engine.index)
        if notice is None or notice.pid != process.pid:
            return None
        if notice.ready and not engine.ready:
            engine.ready = engine.served = True
        return notice

    def _ended(self, engine: _Engine, process: subprocess.Popen[bytes], now: float) -> None:
        from prometheus_client import multiprocess

        # Its notice first: an engine that said it was ready just before it died was not a start failure,
        # even when it died between two of these checks (the workers may already have served through it).
        self._note_ready(engine, process)
        code = process.returncode
        engine.process = None
        self._board.engines.withdraw(engine.index)
        multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
        shrink_metric_files(self._folder / METRICS_SUBFOLDER, process.pid)
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        if not engine.served:
            raise HaltServer(f"engine process {engine.index} failed to start ({how})", ExitCode.START_FAILED)
        lived = now - engine.started
        engine.failures = 0 if lived > HEALTHY_AFTER_S else engine.failures + 1
        engine.next_start = now + BACKOFF_S[min(engine.failures, len(BACKOFF_S) - 1)]
        restarts = self._board.count_restart("engine_restarts")
        log.error(
            "engine process %d (pid %d) died (%s); starting a replacement (%d replaced so far)",
            engine.index,
            process.pid,
            how,
            restarts,
            extra={"engine": engine.index, "pid": process.pid, "restarts": restarts},
        )
        if engine.next_start <= now:
            self._spawn(engine)

    def stop(self, grace_s: float) -> None:
        """SIGTERM every engine (after the workers stopped), wait up to `grace_s`, then SIGKILL the rest."""
        running = [e.process for e in self._engines if e.process is not None and e.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in running:
            if process.poll() is None:
                log.warning("engine process pid %d did not stop in %.0f s: killing it", process.pid, grace_s)
                process.kill()
                process.wait()
        for engine in self._engines:
            engine.process = None

    def _spawn(self, engine: _Engine) -> None:
        args = [sys.executable, "-m", "app.engine", "--index", str(engine.index), "--device", engine.device]
        args += ["--socket", engine.path, "--folder", str(self._folder), "--parent", str(os.getpid())]
        if self._factory:
            args += ["--factory", self._factory]
        path = os.environ.get("PYTHONPATH")
        env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}
        engine.process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)
        engine.started = time.monotonic()
        engine.ready = False
        log.info("engine process %d (pid %d) starting on %s", engine.index, engine.process.pid, engine.device)
