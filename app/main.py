"""Build the FastAPI app: `create_app(settings)`; all state is made in the lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.batches import router as batches_router
from app.api.body import with_request_schemas
from app.api.errors import install_error_handlers
from app.api.index import router as index_router
from app.api.limits import BodyLimitMiddleware
from app.api.models import router as models_router
from app.api.observe import ObserveMiddleware
from app.api.openai import router as openai_router
from app.api.ops import router as ops_router
from app.api.routes import SIGNED_BODIES, router
from app.auth.verify import make_verifier
from app.fetch.download import make_fetcher
from app.fetch.urlguard import Lookup, system_lookup
from app.inference.cache import TieredCache
from app.inference.engine import EngineLike
from app.inference.loading import load_clip
from app.inference.model import ItemPreparer, ModelInfo, ModelLoadError
from app.inference.registry import EmbedderFactory, EngineOpener, ModelRegistry, ModelState
from app.inference.spec import ModelSpec
from app.ops.admission import Admission
from app.ops.lifecycle import Lifecycle
from app.ops.pod import PodBoard
from app.pipeline import EmbeddingPipeline
from app.services import Services, Status
from app.settings import Settings
from app.state.cache import RedisEmbeddingCache
from app.state.shared import open_shared_state, watch_shared_state

log = logging.getLogger("app")

__all__ = ["EmbedderFactory", "EngineOpener", "create_app"]
# How long shutdown waits for the background tasks to end, so that one that does not can never hang it.
TASKS_STOP_S = 5.0


def create_app(
    settings: Settings,
    *,
    embedder_factory: EmbedderFactory = load_clip,
    on_fatal: Callable[[str], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    lifecycle: Lifecycle | None = None,
    lookup: Lookup = system_lookup,
    pod: PodBoard | None = None,
    engine_opener: EngineOpener | None = None,
) -> FastAPI:
    """Return the service app; `embedder_factory` is the model seam for tests and benchmarks,
    `on_ready` runs once the model is loaded, just before the app reports ready (python -m app settles
    the heap there), `lifecycle` the handle a server uses to drain it, `lookup` the DNS seam the URL guard checks,
    `pod` the notice board of the pod's workers (WORKERS > 1), `engine_opener` the pod's engine processes
    (ENGINE_PROCESS: the model is not loaded here, `embedder_factory` runs in them)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        state = open_shared_state(settings)
        verifier = make_verifier(settings, gate=state.gate if state is not None else None)
        services = Services.create(settings, verifier, pod, state)
        shared_vectors = state.cache if state is not None else None
        stopping = asyncio.Event()  # background tasks end on it: a cancellation can be swallowed (redis-py, 3.11)
        tasks = [asyncio.create_task(watch_shared_state(services, stopping), name="shared-state")] if state else []
        if lifecycle is not None:
            lifecycle.services = services
        fetcher = make_fetcher(settings, lookup)
        cpu_pool = ThreadPoolExecutor(settings.resolved_cpu_workers(), thread_name_prefix="cpu")
        configured = settings.models is not None

        def build_pipeline(
            spec: ModelSpec, embedder: ItemPreparer, engine: EngineLike, admission: Admission
        ) -> EmbeddingPipeline:
            info = embedder.info
            return EmbeddingPipeline(
                fetcher,
                embedder,
                engine,
                cpu_pool,
                max_pixels=settings.max_image_pixels,
                fast_decode=settings.fast_decode,
                # A model whose preprocessing has no tensor path decodes every JPEG on the decode threads.
                jpeg_decode=info.image_path.partition("/")[2] or settings.jpeg_decode,
                request_timeout_s=settings.request_timeout_s,
                admission=admission,
                metrics=services.metrics,
                cache=_model_cache(services, shared_vectors, info, scoped=configured),
                model=spec.served_name,
            )

        registry = ModelRegistry(
            settings,
            embedder_factory,
            services.metrics,
            services.admission,
            build_pipeline,
            engine_opener=engine_opener,
        )
        services.registry = registry

        async def load() -> None:
            started = time.perf_counter()
            try:
                await registry.load_at_start()
            except ModelLoadError as exc:
                _fail(services, _which(registry, str(exc)), on_fatal)
                return
            except Exception as exc:
                log.exception("model failed to load")
                _fail(services, _which(registry, f"model failed to load: {type(exc).__name__}: {exc}"), on_fatal)
                return
            services.load_seconds = time.perf_counter() - started
            if on_ready is not None:
                try:
                    on_ready()  # before /health says ok: settling collects once, with the loop stopped
                except Exception as exc:
                    log.exception("on_ready failed")
                    _fail(services, f"start-up failed after the model loaded: {type(exc).__name__}: {exc}", on_fatal)
                    return
            services.mark_ready()
            for model in registry.models:
                info = model.info
                if info is not None:
                    log.info(
                        "model %s ready on %s (%s, dim %d, %s kernels, fingerprint %s)",
                        info.served_name,
                        info.device,
                        info.dtype,
                        info.dim,
                        info.kernels,
                        info.fingerprint[:16] or "unknown",
                    )

        loader = asyncio.create_task(load(), name="model-loader")
        tasks.append(loader)
        try:
            if lifecycle is not None:
                await lifecycle.before_serving(loader)  # a pod's replacement worker serves once loaded
            yield {"services": services}
        finally:
            stopping.set()
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=TASKS_STOP_S)
            # Engines stop (a running batch ends first), caches finish their writes, model threads end.
            await registry.aclose()
            await fetcher.aclose()
            cpu_pool.shutdown(wait=False, cancel_futures=True)
            if state is not None:
                await state.aclose()

    app = FastAPI(
        title="CLIP embedding service",
        version="1.0.0",
        lifespan=lifespan,
        description=(
            "Image and text embeddings from an open_clip model, with HMAC-signed requests; "
            "/v1/embeddings is OpenAI-compatible and also takes API keys."
        ),
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        timeout_s=settings.request_body_timeout_s,
        budget_bytes=settings.resolved_buffered_request_bytes(),
    )
    app.include_router(router)
    app.include_router(batches_router)
    app.include_router(openai_router)
    app.include_router(models_router)
    app.include_router(ops_router)
    app.include_router(index_router)
    app.add_middleware(ObserveMiddleware)  # added last: outermost, so it sees every answer
    with_request_schemas(app, SIGNED_BODIES)
    return app


def _model_cache(
    services: Services, shared: RedisEmbeddingCache | None, info: ModelInfo, *, scoped: bool
) -> TieredCache | None:
    """Return a model's cache: the process's LRU (its keys scoped to the model when MODELS lists several) in front
    of the shared store tagged with the model's embedding space; share nothing when that space is unknown."""
    model_shared: RedisEmbeddingCache | None = None
    if shared is not None:
        if not info.fingerprint:
            log.warning("model %s has no fingerprint: the shared cache (STATE_URL) stays unused", info.served_name)
        if scoped:
            model_shared = shared.for_model(info.fingerprint) if info.fingerprint else None
        else:
            # One model (CLIP_MODEL): tag the shared cache itself, untagged it shares nothing.
            if info.fingerprint:
                shared.use_model(info.fingerprint)
            model_shared = shared
    if services.cache is None and model_shared is None:
        return None
    scope = f"{info.fingerprint[:16] or info.served_name}:" if scoped else ""
    return TieredCache(services.cache, model_shared, scope)


def _which(registry: ModelRegistry, reason: str) -> str:
    """Name the model whose load failed when MODELS lists them (with CLIP_MODEL alone the reason says it all)."""
    failed = next((m for m in registry.models if m.state is ModelState.FAILED), None)
    return f"model {failed.name}: {reason}" if registry.configured and failed is not None else reason


def _fail(services: Services, reason: str, on_fatal: Callable[[str], None] | None) -> None:
    log.error("start-up failed: %s", reason)
    services.status, services.reason = Status.FAILED, reason
    if on_fatal is not None:
        on_fatal(reason)
