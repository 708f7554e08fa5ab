"""The Ray Serve deployment: `create_app(settings)` on each replica's own HTTP port, behind HAProxy, one model each.

`serve run deploy/ray/serve.yaml` (or `serve deploy`) imports `app` from here. Each replica reads its
settings from its own environment, as `python -m app` does, builds the one app of app/main.py and runs its
lifespan; Serve routes to it once `check_health` says the model is warm, and removes it like a SIGTERM'd pod:
Serve stops routing to it and waits for its requests, then the app drains and shuts down.
"""

from __future__ import annotations

import os

from app.settings import OPENMP_SPIN_COUNT

# As in app/__main__.py: set before the imports below load torch (a value in the environment wins).
os.environ.setdefault(OPENMP_SPIN_COUNT.name, OPENMP_SPIN_COUNT.default)

import asyncio
import logging

from fastapi import FastAPI
from ray import serve
from ray.serve.config import AutoscalingConfig

from app.inference.loading import load_clip
from app.main import EmbedderFactory, create_app
from app.ops.heap import settle_heap
from app.ops.lifecycle import Lifecycle
from app.ops.logs import configure_logging
from app.serve.lifespan import LifespanStateMiddleware
from app.services import Status
from app.settings import Settings

log = logging.getLogger("app.serve")

DEPLOYMENT_NAME = "clip"
# How often a replica still loading its model looks again, while Serve's first health check waits.
LOADING_POLL_S = 0.1

# The defaults of a GPU cluster; deploy/ray/serve.yaml restates them and says where each comes from.
RAY_ACTOR_OPTIONS = {"num_gpus": 1, "num_cpus": 4}
AUTOSCALING = AutoscalingConfig(
    min_replicas=1,
    max_replicas=4,
    target_ongoing_requests=16,
    upscale_delay_s=30,
    downscale_delay_s=300,
)
# Above the target, so that a replica keeps batching across callers while the autoscaler reacts; HAProxy
# passes every request on at once, so those past it wait inside the replica, where the autoscaler counts them.
MAX_ONGOING_REQUESTS = 64
# Serve's wait for a removed replica's requests plus the app's own drain; keep it above SHUTDOWN_GRACE_S.
GRACEFUL_SHUTDOWN_TIMEOUT_S = 30
HEALTH_CHECK_PERIOD_S = 5
# The app logs every request itself (id, status, duration); Serve's access log line would be a second one.
LOGGING_CONFIG = {"enable_access_log": False}


class Unhealthy(RuntimeError):
    """A replica that cannot serve: Serve restarts it (its model failed to load, or its engine stopped)."""


@serve.ingress()
class _Ingress:
    """The replica's state: its settings, its app (built by Serve after __init__) and the drain handle."""

    def __init__(self, embedder_factory: EmbedderFactory = load_clip) -> None:
        self.settings = Settings()
        self.embedder_factory = embedder_factory
        configure_logging(self.settings.log_level, self.settings.log_format)
        for warning in self.settings.startup_warnings():
            log.warning(warning)
        self.lifecycle = Lifecycle()

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Serve runs the app's lifespan next, in this replica, as uvicorn would.
        app = create_app(
            self.settings, embedder_factory=self.embedder_factory, on_ready=settle_heap, lifecycle=self.lifecycle
        )
        app.add_middleware(LifespanStateMiddleware)  # outermost: every request sees the lifespan's services
        return app


class ClipReplica(_Ingress):
    """One replica: the app of app/main.py, its readiness as Serve's health check, its drain on removal.

    `embedder_factory` is the model seam of `create_app` (the benchmarks pass a stand-in)."""

    # Serve's ingress wrapper has an async __init__ and __del__, which typing does not model.
    async def __init__(self, embedder_factory: EmbedderFactory = load_clip) -> None:  # type: ignore[misc]
        await super().__init__(embedder_factory)  # type: ignore[misc]

    async def check_health(self) -> None:
        """Raise unless the app is ready, by the rule /health answers with; wait while the model loads."""
        services = self.lifecycle.services
        while services is None or services.status is Status.LOADING:
            await asyncio.sleep(LOADING_POLL_S)
            services = self.lifecycle.services
        if services.ready() is None:
            raise Unhealthy(f"{services.reported_status()}: {services.reason or 'engine stopped'}")

    async def __del__(self) -> None:
        # Serve has stopped routing here and waited for the requests it knows of; the app drains as on a
        # SIGTERM (/health 503 "draining", stragglers refused with Retry-After) before its lifespan ends.
        if getattr(self, "lifecycle", None) is not None:
            await self.lifecycle.drain(self.settings.shutdown_grace_s)
        await super().__del__()  # type: ignore[misc]


deployment = serve.deployment(
    name=DEPLOYMENT_NAME,
    ray_actor_options=RAY_ACTOR_OPTIONS,
    autoscaling_config=AUTOSCALING,
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_TIMEOUT_S,
    graceful_shutdown_wait_loop_s=0.5,
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
    logging_config=LOGGING_CONFIG,
)(ClipReplica)
app = deployment.bind()
