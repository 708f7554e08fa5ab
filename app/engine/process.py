"""One engine process of a pod (ENGINE_PROCESS): the model on one device, fed by every HTTP worker.

Started by the pod's supervisor (app.engine.supervise) as `python -m app.engine`, a fresh interpreter,
with the pod's environment (settings, PROMETHEUS_MULTIPROC_DIR). It loads the model on its one model
thread, runs this process's Engine on it (app.inference.engine: the batching rules, overlap, the
out-of-memory splitting), listens on its Unix socket once warm, and publishes its notice on the pod's
board. SIGTERM drains: new items are refused, the items in the engine are answered, then it exits 0.
SIGINT and SIGQUIT are the supervisor's to act on (a terminal sends them to the whole group); the
process dies with the supervisor (PR_SET_PDEATHSIG). Exit status 1: the model could not load.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import uvloop

from app.engine import wire
from app.engine.board import EngineBoard, EngineNotice
from app.engine.server import EngineServer
from app.inference.engine import Engine, model_executor
from app.inference.loading import load_clip
from app.inference.model import Embedder, ModelLoadError
from app.inference.registry import make_engine
from app.ops.exits import ExitCode
from app.ops.metrics import Metrics
from app.ops.pod import PUBLISH_EVERY_S
from app.settings import Settings

log = logging.getLogger("app.engine")

_PR_SET_PDEATHSIG = 1


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--folder", type=Path, required=True, help="the pod's folder (notice board)")
    parser.add_argument("--parent", type=int, required=True, help="the supervisor's pid")
    parser.add_argument("--factory", help="module:function that loads the model (the benchmarks' and tests' seam)")
    return parser.parse_args(argv)


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the supervisor dies (Linux), and die now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def factory_named(reference: str | None) -> Callable[[Settings], Embedder]:
    """Return the model loader named `module:function`, or the service's own."""
    if not reference:
        return load_clip
    module, _, name = reference.partition(":")
    found: Callable[[Settings], Embedder] = getattr(importlib.import_module(module), name)
    return found


class EngineProcess:
    """The engine process's state: its notice, its engine and its server once the model is loaded."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings.model_copy(update={"device": args.device})
        self.board = EngineBoard(args.folder, args.index + 1)
        self.status = "loading"
        self.device = args.device
        self.engine: Engine | None = None
        self.server: EngineServer | None = None
        self.stop = asyncio.Event()

    def notice(self) -> EngineNotice:
        notice = EngineNotice(os.getpid(), self.args.index, self.status, self.device)
        if self.engine is not None and self.server is not None:
            notice.workers = self.server.workers
            notice.queues = self.engine.snapshot()
        if self.device.startswith("cuda") and self.engine is not None:
            device = torch.device(self.device)
            notice.gauges = {
                "clip_gpu_memory_allocated_bytes": float(torch.cuda.memory_allocated(device)),
                "clip_gpu_memory_reserved_bytes": float(torch.cuda.memory_reserved(device)),
            }
        return notice

    async def publish(self) -> None:
        while True:
            self.board.publish(self.notice())
            await asyncio.sleep(PUBLISH_EVERY_S)

    async def load(self) -> int:
        """Load the model and serve it until a stop signal; return the exit status."""
        loop = asyncio.get_running_loop()
        model_thread = model_executor()
        factory = factory_named(self.args.factory)
        # Settings allow ENGINE_PROCESS with one model only: MODELS' one entry, or CLIP_MODEL.
        spec = self.settings.served_models()[0]
        try:
            embedder = await loop.run_in_executor(model_thread, factory, self.settings.for_model(spec))
        except ModelLoadError as exc:
            log.error("engine process %d: %s", self.args.index, exc)
            return ExitCode.START_FAILED
        except Exception as exc:
            log.exception("engine process %d: the model failed to load", self.args.index)
            log.error("model failed to load: %s: %s", type(exc).__name__, exc)
            return ExitCode.START_FAILED
        if self.settings.models is not None and not embedder.info.name:
            embedder.info = replace(embedder.info, name=spec.served_name)
        info = embedder.info
        self.device = info.device
        metrics = Metrics()
        metrics.add_model(spec.served_name)
        max_batch = self.settings.resolved_engine_max_batch(info.device)
        engine = make_engine(embedder, spec.served_name, self.settings, metrics, model_thread)
        engine.start()
        self.engine = engine
        ready = wire.Ready(
            engine=self.args.index,
            pid=os.getpid(),
            info=asdict(info),
            tokenizer=info.model,
            preprocess_cfg=getattr(embedder, "preprocess_cfg", None) or None,
            image_preprocess=self.settings.image_preprocess,
            jpeg_decode=self.settings.jpeg_decode,
            max_batch=max_batch,
        )
        self.server = EngineServer(engine, ready, info.dim)
        await self.server.listen(self.args.socket)
        from app.ops.heap import settle_heap

        settle_heap()
        self.status = "ok"
        log.info(
            "engine process %d ready: %s on %s (%s), max batch %d",
            self.args.index,
            info.model,
            info.device,
            info.dtype,
            max_batch,
            extra={"engine": self.args.index},
        )
        await self.stop.wait()
        return await self.drain()

    async def drain(self) -> int:
        """Refuse new items, answer the ones in the engine (up to SHUTDOWN_GRACE_S), then stop."""
        assert self.server is not None and self.engine is not None
        self.status = "draining"
        self.server.stop_taking()
        if not await self.server.wait_idle(self.settings.shutdown_grace_s):
            log.warning("engine process %d: grace period over with items unanswered", self.args.index)
        self.server.close()
        await self.engine.stop()
        log.info("engine process %d stopped", self.args.index)
        return ExitCode.STOPPED


async def run(args: argparse.Namespace, settings: Settings) -> int:
    process = EngineProcess(args, settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, process.stop.set)
    publishing = asyncio.create_task(process.publish(), name="engine-notice")
    loading = asyncio.create_task(process.load(), name="engine-load")
    stopped = asyncio.create_task(process.stop.wait())
    await asyncio.wait([loading, stopped], return_when=asyncio.FIRST_COMPLETED)
    if process.status == "loading" and not loading.done():
        # Stopped while loading: nothing to drain, and the model thread cannot be interrupted.
        log.info("engine process %d: stopped while loading", args.index)
        logging.shutdown()
        os._exit(ExitCode.STOPPED)
    status = await loading
    publishing.cancel()
    stopped.cancel()
    return status


def main(argv: list[str] | None = None) -> int:
    """Run one engine process; return its exit status."""
    from app.__main__ import _settings_or_exit
    from app.ops.logs import configure_logging
    from app.ops.podfolder import METRICS_SUBFOLDER, reserve_metric_files

    args = arguments(argv)
    die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    settings = _settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    reserve_metric_files(args.folder / METRICS_SUBFOLDER, os.getpid())
    return uvloop.run(run(args, settings))


if __name__ == "__main__":
    sys.exit(main())
