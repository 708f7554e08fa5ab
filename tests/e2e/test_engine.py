"""The engine behind real HTTP: a stand-in model, and properties that hold however slow the machine is.

The batching rules' exact times are proven in tests/unit (test_batching, test_engine); these check that the
service feeds the engine what the rules need: requests as callers, downloads as announced items.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from app.pipeline import INLINE_TOKENIZE_CHARS
from tests.support.api import call
from tests.support.data import jpeg_bytes, tiny_settings
from tests.support.fake_model import FakeEmbedder
from tests.support.imageserver import ImageServer
from tests.support.metrics import delta, scrape
from tests.support.service import run_service, wait_healthy


def _embed(base: str, url: str) -> int:
    return call(base, "/v1/embed/image", {"image_url": url})[0]


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_http_requests_queued_behind_a_running_batch_share_the_next_forward_pass(image_server):
    gate = threading.Event()
    model = FakeEmbedder(gate=gate)
    urls = [image_server.url(f"img/photo{i % 6}.jpg") for i in range(12)]
    try:
        with (
            run_service(tiny_settings(cache_max_entries=0), embedder_factory=lambda s: model) as svc,
            ThreadPoolExecutor(12) as pool,
        ):
            first = pool.submit(_embed, svc.base, urls[0])
            assert model.running.wait(10)
            rest = [pool.submit(_embed, svc.base, url) for url in urls[1:]]
            _wait_until(lambda: call(svc.base, "/health")[1]["engine"]["images"]["queue_depth"] == 11, "11 queued")
            gate.set()
            statuses = [future.result() for future in (first, *rest)]
            _, health, _ = call(svc.base, "/health")
    finally:
        gate.set()
    assert statuses == [200] * 12
    assert model.image_batches == [1, 11]
    assert (health["engine"]["images"]["items"], health["engine"]["images"]["batches"]) == (12, 2)


def test_health_answers_while_a_batch_is_computed(image_server):
    gate = threading.Event()
    model = FakeEmbedder(gate=gate)
    try:
        with run_service(tiny_settings(), embedder_factory=lambda s: model) as svc, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_embed, svc.base, image_server.url("img/photo0.jpg"))
            assert model.running.wait(10)
            status, _, _ = call(svc.base, "/health", timeout=10)
            batch_still_running = not pending.done()
            gate.set()
            assert pending.result() == 200
    finally:
        gate.set()
    assert status == 200 and batch_still_running


def test_model_is_loaded_on_the_one_thread_that_runs_its_batches(image_server):
    model = FakeEmbedder()
    loaded_on: list[str] = []

    def factory(settings):
        loaded_on.append(threading.current_thread().name)
        return model

    with run_service(tiny_settings(), embedder_factory=factory) as svc:
        assert call(svc.base, "/v1/embed/text", {"text": "hi"})[0] == 200
        assert _embed(svc.base, image_server.url("img/photo0.jpg")) == 200
    assert loaded_on[0].startswith("model")
    assert model.threads == set(loaded_on)


def test_pipeline_tokenises_a_short_text_on_the_event_loop_and_a_long_one_on_the_pool():
    model = FakeEmbedder()
    with run_service(tiny_settings(), embedder_factory=lambda s: model) as svc:
        loop_thread = svc.thread.name
        short = "a" * INLINE_TOKENIZE_CHARS
        assert call(svc.base, "/v1/embed/text", {"text": short})[0] == 200
        assert call(svc.base, "/v1/embed/text", {"text": short + "b"})[0] == 200
    assert model.tokenized_on[0] == loop_thread
    assert model.tokenized_on[1].startswith("cpu")
    assert model.text_batches == [1, 1]


def test_health_is_503_loading_until_model_is_ready():
    release = threading.Event()

    def slow_factory(settings):
        release.wait(30)
        return FakeEmbedder()

    with run_service(tiny_settings(), embedder_factory=slow_factory, wait_ready=False) as svc:
        status, body, _ = call(svc.base, "/health")
        text_status, text_body, _ = call(svc.base, "/v1/embed/text", {"text": "hi"})
        # The signature is checked before readiness: an unsigned caller learns nothing of the state.
        unsigned_status, unsigned_body, _ = call(svc.base, "/v1/embed/text", {"text": "hi"}, secret=None)
        release.set()
        wait_healthy(svc.base, time.monotonic() + 10)
        ready_status, _, _ = call(svc.base, "/health")
    assert (status, body["status"]) == (503, "loading")
    assert (text_status, text_body["error"]["code"]) == (503, "unavailable")
    assert (unsigned_status, unsigned_body["error"]["code"]) == (401, "missing_auth_headers")
    assert ready_status == 200


def test_http_requests_still_downloading_join_the_batch_of_those_ready():
    # The first forward pass takes 3 s, so the engine waits up to 1.5 s for announced items: far beyond the
    # 0.2 s the ready image is held here, and the 16 ms cap it would go at without the announcements.
    model = FakeEmbedder(t0=3.0)
    with ImageServer() as images:
        for seed in range(4):
            images.files[f"photo{seed}.jpg"] = jpeg_bytes(96 + 16 * seed, 64, seed)
        try:
            with (
                run_service(tiny_settings(cache_max_entries=0), embedder_factory=lambda s: model) as svc,
                ThreadPoolExecutor(3) as pool,
            ):
                assert _embed(svc.base, images.url("img/photo0.jpg")) == 200
                model.t0 = 0.0
                downloading = [pool.submit(_embed, svc.base, images.url(f"gated/photo{i}.jpg")) for i in (2, 3)]
                _wait_until(lambda: images.count("/gated/") == 2, "both downloads started")
                ready = pool.submit(_embed, svc.base, images.url("img/photo1.jpg"))
                _wait_until(lambda: images.count("/img/photo1.jpg") == 1, "the ready image was downloaded")
                time.sleep(0.2)  # the ready image waits in the engine, past the cap, for the two announced
                images.gate.set()
                statuses = [future.result() for future in (ready, *downloading)]
        finally:
            images.gate.set()
    assert statuses == [200, 200, 200]
    assert model.image_batches == [1, 3]


def test_http_single_images_after_a_batch_request_are_not_held_for_its_size(image_server):
    # One request of four images is one client: the lone requests after it go at once, not after waiting
    # out the whole ENGINE_MAX_WAIT_MS (a second here) for three more clients that are not coming.
    model = FakeEmbedder()
    settings = tiny_settings(engine_max_batch=4, engine_max_wait_ms=1000, cache_max_entries=0)
    with run_service(settings, embedder_factory=lambda s: model) as svc:
        urls = [image_server.url(f"img/photo{i}.jpg") for i in range(4)]
        status, _, _ = call(svc.base, "/v1/embed/image-batch", {"image_urls": urls})
        before = scrape(svc.base)
        statuses = [_embed(svc.base, image_server.url(f"img/photo{i}.jpg")) for i in (4, 5)]
        after = scrape(svc.base)
    assert [status, *statuses] == [200, 200, 200]
    assert model.image_batches == [4, 1, 1]
    waits = {
        le: delta(before, after, "clip_stage_duration_seconds_bucket", stage="queue_wait", le=le)
        for le in ("0.5", "+Inf")
    }
    assert waits == {"0.5": 2, "+Inf": 2}
