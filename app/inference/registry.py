"""The models one process serves, each with its own engine: loaded at start or on first use, unloaded when idle.

Built once in the lifespan (app.main). Each model has a thread of its own, which loads it and runs
its batches, and an engine of its own (`make_engine`, the one place an engine is made), so that a
slow model never holds up another. Loads run one at a time (a lock), on the loading model's thread:
requests to the other models go on meanwhile, and one to the model being loaded gets 503
`model_loading` with Retry-After. A model with `idle_ttl_s` is unloaded once it has had no request
for that long, and loaded again by the next request that names it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum

from app.errors import InvalidRequest, ModelLoading, Unavailable
from app.inference.cpu_kernels import return_freed_memory
from app.inference.engine import Engine, EngineLike, model_executor
from app.inference.model import Embedder, ItemPreparer, ModelInfo
from app.inference.model_guard import GuardedEmbedder, free_accelerator_memory
from app.inference.spec import ModelSpec, spoken_list
from app.ops.admission import Admission
from app.ops.metrics import Metrics
from app.pipeline import EmbeddingPipeline
from app.settings import Settings

log = logging.getLogger("app.inference.registry")

EmbedderFactory = Callable[[Settings], Embedder]
# What makes a loaded model's pipeline (app.main: the process's fetcher, decode threads and caches).
BuildPipeline = Callable[[ModelSpec, ItemPreparer, EngineLike, Admission], EmbeddingPipeline]
# Connects to the model where it runs outside this process (ENGINE_PROCESS: the pod's engine processes,
# app.engine.client): what the pipeline prepares items with, and the engine it submits them to.
EngineOpener = Callable[[], Awaitable[tuple[ItemPreparer, EngineLike]]]
# A model whose load failed on demand is not tried again for this long; requests meanwhile get 503.
RELOAD_AFTER_FAILURE_S = 30.0
# What Retry-After says for a model that has never loaded, when no load time is known yet.
FIRST_LOAD_GUESS_S = 5.0


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNLOADED = "unloaded"
    FAILED = "failed"


class ModelAdmission(Admission):
    """One model's share of the process's admission bound: its own items in flight and when it was last used."""

    def __init__(self, shared: Admission, clock: Callable[[], float]) -> None:
        super().__init__(shared.limit)
        self._shared = shared
        self._clock = clock
        self.last_used = clock()

    @contextmanager
    def admit(self, items: int) -> Iterator[None]:
        with self._shared.admit(items):
            self.current += items
            self.last_used = self._clock()
            try:
                yield
            finally:
                self.current -= items
                self.last_used = self._clock()


@dataclass(slots=True)
class Loaded:
    """What a loaded model serves with (its engine is this process's, or the pod's engine processes')."""

    embedder: ItemPreparer
    engine: EngineLike
    pipeline: EmbeddingPipeline


class ServedModel:
    """One entry of MODELS and where it stands: its state, its last load, what it serves with once loaded."""

    def __init__(self, spec: ModelSpec, admission: ModelAdmission) -> None:
        self.spec = spec
        self.admission = admission
        self.state = ModelState.UNLOADED
        self.loaded: Loaded | None = None
        self.info: ModelInfo | None = None  # the last load's, kept after an unload
        # Loaded when asked for, not at start (lazy, or unloaded once idle): /health does not wait for it.
        self.on_demand = spec.lazy
        self.error: str | None = None
        self.failed_at = -math.inf
        self.load_seconds: float | None = None
        self.loaded_at: float | None = None  # Unix time of the last load
        self.thread: ThreadPoolExecutor = model_executor()
        self.task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.served_name

    @property
    def ready(self) -> bool:
        """Say whether requests can be served: loaded and its engine running."""
        return self.state is ModelState.READY and self.loaded is not None and self.loaded.engine.alive

    def why_not_ready(self) -> str:
        """Say what keeps this model from serving."""
        if self.state is ModelState.READY:
            engine = self.loaded.engine if self.loaded is not None else None
            return f"model {self.name}: {engine.unavailable_reason() if engine is not None else 'engine stopped'}"
        if self.state is ModelState.FAILED:
            return f"model {self.name} failed to load: {self.error}"
        return f"model {self.name} is {self.state.value}"


def make_engine(
    embedder: Embedder, name: str, settings: Settings, metrics: Metrics, model_thread: ThreadPoolExecutor
) -> Engine:
    """Return a model's engine (not started): its own queues and batches, on its own thread."""
    return Engine(
        GuardedEmbedder(embedder, metrics, name),
        max_batch=settings.resolved_engine_max_batch(embedder.info.device),
        max_wait_ms=settings.engine_max_wait_ms,
        observer=metrics,
        model_thread=model_thread,
        overlap=settings.engine_overlap,
    )


class ModelRegistry:
    """The served models by name; `use` hands a request its model's pipeline, or says why it cannot."""

    def __init__(
        self,
        settings: Settings,
        factory: EmbedderFactory,
        metrics: Metrics,
        admission: Admission,
        build_pipeline: BuildPipeline,
        clock: Callable[[], float] = time.monotonic,
        engine_opener: EngineOpener | None = None,
    ) -> None:
        self._settings = settings
        # ENGINE_PROCESS: the one model (Settings allows no other) runs in the engine processes, not here.
        self._opener = engine_opener
        self._factory = factory
        self._metrics = metrics
        self._build = build_pipeline
        self._clock = clock
        # MODELS set: answers name models as requests do; unset: everything as with CLIP_MODEL alone.
        self.configured = settings.models is not None
        self.models = [ServedModel(spec, ModelAdmission(admission, clock)) for spec in settings.served_models()]
        self.default = next(model for model in self.models if model.spec.default)
        self._by_name = {name: model for model in self.models for name in model.spec.names}
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        for model in self.models:
            metrics.add_model(model.name)

    def names(self) -> list[str]:
        """Return every name a request may use, in MODELS' order."""
        return list(self._by_name)

    def find(self, name: str | None) -> ServedModel:
        """Return the model `name` selects (the default for None); InvalidRequest naming the served ones if none."""
        if name is None:
            return self.default
        model = self._by_name.get(name)
        if model is None:
            raise InvalidRequest(
                f"model {name[:100]!r} is not served here: this service serves {spoken_list(self.names())}"
            )
        return model

    def use(self, name: str | None, modality: str) -> tuple[EmbeddingPipeline, ModelInfo]:
        """Return the pipeline and info of the model a request names, to embed `modality` ("image" or "text").

        Raise InvalidRequest (unknown model, a tower it does not load), ModelLoading (loading, or unloaded:
        the load starts now) or Unavailable (its engine stopped, its load failed).
        """
        model = self.find(name)
        if modality not in model.spec.modalities:
            raise InvalidRequest(
                f"model {model.name!r} loads its {model.spec.towers} tower only (towers={model.spec.towers}): "
                f"it cannot embed {modality}s"
            )
        if model.ready:
            assert model.loaded is not None and model.info is not None
            model.admission.last_used = self._clock()
            return model.loaded.pipeline, model.info
        if model.state is ModelState.READY:
            raise Unavailable(model.why_not_ready())
        if model.state is ModelState.UNLOADED or (
            model.state is ModelState.FAILED
            and model.on_demand
            and self._clock() - model.failed_at >= RELOAD_AFTER_FAILURE_S
        ):
            self.request_load(model)
        if model.state is ModelState.FAILED:
            raise Unavailable(model.why_not_ready())
        guess = model.load_seconds or FIRST_LOAD_GUESS_S
        raise ModelLoading(f"model {model.name!r} is loading (a load takes about {guess:.0f} s); retry shortly", guess)

    def all_ready(self) -> bool:
        """Say whether every model loaded at start still serves (those loaded on demand do not count)."""
        return all(model.ready for model in self.models if not model.on_demand)

    def why_not_ready(self) -> str | None:
        """Say which model loaded at start does not serve, or None when all do."""
        waiting = [model for model in self.models if not model.on_demand and not model.ready]
        if not waiting:
            return None
        required = sum(1 for model in self.models if not model.on_demand)
        reasons = "; ".join(model.why_not_ready() for model in waiting)
        return f"{required - len(waiting)} of {required} models ready: {reasons}"

    async def load_at_start(self) -> None:
        """Load every model that is not lazy, one at a time, in MODELS' order; raise the first failure."""
        for model in self.models:
            if not model.spec.lazy:
                model.state = ModelState.LOADING
        for model in self.models:
            if not model.spec.lazy:
                await self._load(model)
        ttls = [model.spec.idle_ttl_s for model in self.models if model.spec.idle_ttl_s is not None]
        if ttls:
            tick = min(max(min(ttls) / 4, 0.05), 5.0)
            self._reaper = asyncio.create_task(self._reap(tick), name="model-reaper")

    def request_load(self, model: ServedModel) -> None:
        """Start loading `model` in the background, unless it is loading already."""
        if model.task is not None and not model.task.done():
            return
        model.state = ModelState.LOADING
        model.task = asyncio.create_task(self._load_on_demand(model), name=f"load-{model.name}")

    async def _load_on_demand(self, model: ServedModel) -> None:
        try:
            await self._load(model)
        except Exception:
            log.exception("model %s failed to load on demand", model.name)

    async def _load(self, model: ServedModel) -> None:
        async with self._lock:  # one load at a time: two at once could take twice the memory
            model.state = ModelState.LOADING
            started = time.perf_counter()
            try:
                embedder, engine = await self._open(model)
            except BaseException as exc:
                model.state, model.error, model.failed_at = (
                    ModelState.FAILED,
                    f"{type(exc).__name__}: {exc}",
                    self._clock(),
                )
                self._metrics.model_loads.labels(model.name, "failed").inc()
                raise
            pipeline = self._build(model.spec, embedder, engine, model.admission)
            model.loaded, model.info, model.error = Loaded(embedder, engine, pipeline), embedder.info, None
            model.load_seconds, model.loaded_at = time.perf_counter() - started, time.time()
            model.admission.last_used = self._clock()
            model.state = ModelState.READY
            self._metrics.model_loads.labels(model.name, "loaded").inc()
            log.info("model %s loaded in %.1f s", model.name, model.load_seconds)

    async def _open(self, model: ServedModel) -> tuple[ItemPreparer, EngineLike]:
        """Load `model` on its thread and start its engine; or connect to the engine processes that run it."""
        if self._opener is not None:
            return await self._opener()
        loop = asyncio.get_running_loop()
        embedder = await loop.run_in_executor(model.thread, self._factory, self._settings.for_model(model.spec))
        if self.configured and not embedder.info.name:
            embedder.info = replace(embedder.info, name=model.name)
        engine = make_engine(embedder, model.name, self._settings, self._metrics, model.thread)
        engine.start()
        return embedder, engine

    async def unload(self, model: ServedModel) -> None:
        """Stop the model's engine and let its weights go; the next request that names it loads it again."""
        loaded, model.loaded = model.loaded, None
        model.state, model.on_demand = ModelState.UNLOADED, True
        if loaded is None:
            return
        await loaded.engine.stop()
        await loaded.pipeline.aclose()
        del loaded
        await asyncio.get_running_loop().run_in_executor(model.thread, _release)
        log.info("model %s unloaded after %.0f s without a request", model.name, model.spec.idle_ttl_s or 0)

    async def _reap(self, tick: float) -> None:
        """Unload every model idle for its idle_ttl_s, with nothing of it in flight."""
        while True:
            await asyncio.sleep(tick)
            now = self._clock()
            for model in self.models:
                ttl = model.spec.idle_ttl_s
                idle = now - model.admission.last_used
                if ttl is not None and model.ready and model.admission.current == 0 and idle >= ttl:
                    await self.unload(model)

    async def aclose(self) -> None:
        """Stop every engine and thread; a batch running ends first, a load in progress is not waited for."""
        tasks = [t for t in (self._reaper, *(m.task for m in self.models)) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for model in self.models:
            loaded = model.loaded
            if loaded is not None:
                await loaded.engine.stop()
                await loaded.pipeline.aclose()
            model.thread.shutdown(wait=loaded is not None, cancel_futures=True)


def _release() -> None:
    """Free what an unloaded model held: unreachable tensors, cached CUDA blocks, and freed heap pages."""
    free_accelerator_memory()
    return_freed_memory()
