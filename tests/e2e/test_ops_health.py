"""/health tells the truth (loading, engine dead, draining, shared store down); /live only says the process answers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.api.routes import STATE_DOWN_REASON
from app.ops.lifecycle import Lifecycle
from app.ops.probe import probe
from scripts.procs import free_port
from tests.support.api import call
from tests.support.data import tiny_settings
from tests.support.fake_model import FakeEmbedder
from tests.support.metrics import scrape, value
from tests.support.pod import redis_or_skip
from tests.support.redis import RedisServer
from tests.support.service import run_service, wait_healthy


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def test_live_is_200_while_loading_and_health_is_503():
    release = threading.Event()

    def slow_factory(settings):
        release.wait(30)
        return FakeEmbedder()

    with run_service(tiny_settings(), embedder_factory=slow_factory, wait_ready=False) as svc:
        live = call(svc.base, "/live")
        health_status, health, headers = call(svc.base, "/health")
        probe_loading = probe("/health", port=_port(svc.base))
        release.set()
        wait_healthy(svc.base, time.monotonic() + 10)
        probe_ready = probe("/health", port=_port(svc.base))
    assert live[:2] == (200, {"status": "alive"})
    assert (health_status, health["status"], health["reason"]) == (503, "loading", "model is loading")
    assert headers["retry-after"] == "1"
    assert (probe_loading, probe_ready) == (1, 0)


def test_live_is_200_and_health_503_when_model_failed():
    def broken_factory(settings):
        raise RuntimeError("weights corrupt")

    with run_service(tiny_settings(), embedder_factory=broken_factory, wait_ready=False) as svc:
        deadline = time.monotonic() + 10
        while (health := call(svc.base, "/health"))[1]["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        live = call(svc.base, "/live")
    assert (health[0], health[1]["status"]) == (503, "failed")
    assert "weights corrupt" in health[1]["reason"]
    assert live[0] == 200


def test_health_is_503_when_engine_worker_died():
    lifecycle = Lifecycle()
    with run_service(tiny_settings(), embedder_factory=lambda s: FakeEmbedder(), lifecycle=lifecycle) as svc:
        assert call(svc.base, "/health")[0] == 200
        engine = lifecycle.services.engine
        task = engine.images._task
        task.get_loop().call_soon_threadsafe(task.cancel)
        deadline = time.monotonic() + 10
        while engine.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        status, body, _ = call(svc.base, "/health")
        live = call(svc.base, "/live")
        text = call(svc.base, "/v1/embed/text", {"text": "hello"})
    assert (status, body["status"], body["reason"]) == (503, "unavailable", "engine stopped")
    assert live[0] == 200
    assert (text[0], text[1]["error"]["code"]) == (503, "unavailable")


def test_health_is_503_draining_and_new_requests_refused_while_draining(image_server):
    lifecycle = Lifecycle()
    with run_service(tiny_settings(), embedder_factory=lambda s: FakeEmbedder(), lifecycle=lifecycle) as svc:
        loop = lifecycle.services.engine.images._task.get_loop()
        drained = asyncio.run_coroutine_threadsafe(lifecycle.drain(5), loop).result(10)
        status, body, headers = call(svc.base, "/health")
        refused = call(svc.base, "/v1/embed/image", {"image_url": image_server.url("img/photo0.jpg")})
        live = call(svc.base, "/live")
    assert drained is True
    assert (status, body["status"], body["reason"]) == (503, "draining", "draining: the server is shutting down")
    assert body["model"] == "fake"  # metadata stays visible while draining
    assert headers["retry-after"] == "1"
    assert (refused[0], refused[1]["error"]["code"]) == (503, "unavailable")
    assert "shutting down" in refused[1]["error"]["message"]
    assert live[0] == 200


@pytest.mark.parametrize("path", ["/health", "/live"])
def test_probe_fails_when_nothing_listens(path):
    assert probe(path, port=free_port(), timeout_s=2) == 1


def test_health_is_503_while_the_shared_store_is_unreachable_and_live_stays_200(tmp_path):
    with RedisServer(redis_or_skip(), tmp_path) as store:
        settings = tiny_settings(state_url=store.url)
        with run_service(settings, embedder_factory=lambda s: FakeEmbedder()) as svc:
            store.kill()
            down = call(svc.base, "/health")
            down_live, down_ready = call(svc.base, "/live"), value(scrape(svc.base), "clip_ready")
            store.start()  # a fresh Redis on the same port: the service recovers without a restart
            up = call(svc.base, "/health")
            up_ready = value(scrape(svc.base), "clip_ready")
    status, body, headers = down
    # A readiness probe sends no more traffic (signed requests with a nonce would get 503)...
    assert (status, body["status"], body["reason"], body["shared_state"], headers["retry-after"]) == (
        503,
        "unavailable",
        STATE_DOWN_REASON,
        "unreachable",
        "1",
    )
    # ...while liveness stays 200: nothing to gain from restarting the process over a Redis outage.
    assert (down_live[0], down_ready) == (200, 0)
    assert (up[0], up[1]["status"], up[1]["shared_state"], up_ready) == (200, "ok", "ok", 1)
