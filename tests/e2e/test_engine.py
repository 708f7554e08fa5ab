"""Cross-request batching, proven with a stand-in model whose cost is known."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.errors import Unavailable
from app.inference.engine import Engine
from app.pipeline import INLINE_TOKENIZE_CHARS
from tests.support.api import call
from tests.support.data import tiny_settings
from tests.support.fake_model import FakeEmbedder
from tests.support.service import run_service


async def test_engine_batches_concurrent_submissions_and_returns_each_its_own():
    model = FakeEmbedder(t0=0.05)
    engine = Engine(model, max_batch=64, max_wait_ms=2)
    engine.start()
    try:
        payloads = [torch.full((4, 4, 3), float(i)) for i in range(20)]
        results = await asyncio.gather(*(engine.images.submit([p]) for p in payloads))
    finally:
        await engine.stop()
    for payload, (vector,) in zip(payloads, results, strict=True):
        np.testing.assert_allclose(vector, model._run([payload], [])[0])
    assert sum(model.image_batches) == 20
    assert len(model.image_batches) < 20
    assert max(model.image_batches) > 1


async def test_engine_never_exceeds_max_batch():
    model = FakeEmbedder(t0=0.01)
    engine = Engine(model, max_batch=4, max_wait_ms=0)
    engine.start()
    try:
        await asyncio.gather(*(engine.images.submit([torch.zeros(4, 4, 3)] * 3) for _ in range(5)))
    finally:
        await engine.stop()
    assert sum(model.image_batches) == 15
    assert max(model.image_batches) == 4


async def test_engine_first_batch_waits_then_queue_forms_one_large_batch():
    gate = threading.Event()
    model = FakeEmbedder(gate=gate)
    engine = Engine(model, max_batch=64, max_wait_ms=0)
    engine.start()
    try:
        first = asyncio.create_task(engine.images.submit([torch.zeros(4, 4, 3)]))
        await asyncio.to_thread(model.running.wait, 5)
        # While the first batch runs, ten requests arrive; they must share the next forward pass.
        rest = [asyncio.create_task(engine.images.submit([torch.ones(4, 4, 3)])) for _ in range(10)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)
    finally:
        await engine.stop()
    assert model.image_batches == [1, 10]


async def test_engine_model_error_fails_only_that_batch():
    class Broken(FakeEmbedder):
        def encode_texts(self, tokens):
            raise RuntimeError("boom")

    model = Broken()
    engine = Engine(model, max_batch=8, max_wait_ms=0)
    engine.start()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            await engine.texts.submit([torch.zeros(8)])
        (vector,) = await engine.images.submit([torch.zeros(4, 4, 3)])
    finally:
        await engine.stop()
    assert vector.shape == (8,)
    assert engine.alive is False


async def test_engine_refuses_work_when_stopped():
    engine = Engine(FakeEmbedder(), max_batch=8, max_wait_ms=0)
    with pytest.raises(Unavailable):
        await engine.images.submit([torch.zeros(4, 4, 3)])


def test_concurrent_http_requests_reach_model_as_fewer_batches(image_server):
    model = FakeEmbedder(t0=0.2)
    with run_service(tiny_settings(), embedder_factory=lambda s: model) as svc:
        urls = [image_server.url(f"img/photo{i % 6}.jpg") for i in range(12)]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda u: call(svc.base, "/v1/embed/image", {"image_url": u}), urls))
        _, health, _ = call(svc.base, "/health")
    assert all(status == 200 for status, _, _ in answers)
    assert sum(model.image_batches) == 12
    assert len(model.image_batches) < 12
    assert health["engine"]["images"]["items"] == 12
    assert health["engine"]["images"]["batches"] == len(model.image_batches)


def test_health_answers_while_a_batch_is_computed(image_server):
    gate = threading.Event()
    model = FakeEmbedder(gate=gate)
    with run_service(tiny_settings(), embedder_factory=lambda s: model) as svc, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call, svc.base, "/v1/embed/image", {"image_url": image_server.url("img/photo0.jpg")})
        assert model.running.wait(10)
        status, _, _ = call(svc.base, "/health", timeout=2)
        batch_still_running = not pending.done()
        gate.set()
        assert pending.result()[0] == 200
    assert status == 200 and batch_still_running


def test_model_is_loaded_on_the_one_thread_that_runs_its_batches(image_server):
    model = FakeEmbedder()
    loaded_on: list[str] = []

    def factory(settings):
        loaded_on.append(threading.current_thread().name)
        return model

    with run_service(tiny_settings(), embedder_factory=factory) as svc:
        assert call(svc.base, "/v1/embed/text", {"text": "hi"})[0] == 200
        assert call(svc.base, "/v1/embed/image", {"image_url": image_server.url("img/photo0.jpg")})[0] == 200
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
        import time

        from tests.support.service import wait_healthy

        wait_healthy(svc.base, time.monotonic() + 10)
        ready_status, _, _ = call(svc.base, "/health")
    assert (status, body["status"]) == (503, "loading")
    assert (text_status, text_body["error"]["code"]) == (503, "unavailable")
    assert (unsigned_status, unsigned_body["error"]["code"]) == (401, "unauthorized")
    assert ready_status == 200


async def test_engine_gathers_items_that_trickle_in_within_the_wait():
    model = FakeEmbedder()
    engine = Engine(model, max_batch=64, max_wait_ms=100)
    engine.start()
    try:
        tasks = []
        for _ in range(5):
            tasks.append(asyncio.create_task(engine.texts.submit([torch.zeros(8)])))
            await asyncio.sleep(0.04)  # each gap is below the wait; their sum (160 ms) is not
        await asyncio.gather(*tasks)
    finally:
        await engine.stop()
    assert model.text_batches == [5]


@pytest.mark.parametrize(("wave", "batches"), [(3, [3, 3, 1]), (4, [4, 4])], ids=["wave-complete", "wave-short"])
async def test_engine_dispatches_once_a_recent_wave_is_complete(wave, batches):
    model = FakeEmbedder()
    engine = Engine(model, max_batch=64, max_wait_ms=300)
    engine.start()
    try:
        await asyncio.gather(*(engine.texts.submit([torch.zeros(8)]) for _ in range(wave)))
        # The next wave: three at once, then one more 50 ms later, well within the 300 ms wait.
        # Three matching the last wave go at once and the straggler runs alone; three short of it wait.
        first = [asyncio.create_task(engine.texts.submit([torch.zeros(8)])) for _ in range(3)]
        await asyncio.sleep(0.05)
        await asyncio.gather(*first, engine.texts.submit([torch.ones(8)]))
    finally:
        await engine.stop()
    assert model.text_batches == batches


async def _warm(engine: Engine) -> None:
    """Run one text batch, so the engine knows how long a forward pass takes."""
    await engine.texts.submit([torch.zeros(8)])


async def test_engine_merges_a_client_that_joined_during_a_forward_pass_with_the_one_answered():
    model = FakeEmbedder(t0=0.2)
    engine = Engine(model, max_batch=64, max_wait_ms=20)
    engine.start()

    async def client(requests: int) -> None:
        for _ in range(requests):
            await engine.texts.submit([torch.zeros(8)])

    try:
        first = asyncio.create_task(client(3))
        await asyncio.sleep(0.1)  # the second client arrives while the first one's batch runs
        await asyncio.gather(first, client(2))
    finally:
        await engine.stop()
    # Not [1, 1, 1, 1, 1]: the item queued during the pass waits for the answered client to return.
    assert model.text_batches == [1, 2, 2]


@pytest.mark.parametrize(("t0", "batches"), [(0.4, [4, 4]), (0.0, [4, 2, 2])], ids=["slow-model", "free-model"])
async def test_engine_waits_past_the_quiet_window_for_the_rest_of_a_recent_wave(t0, batches):
    model = FakeEmbedder(t0=t0)
    engine = Engine(model, max_batch=64, max_wait_ms=20)  # 160 ms cap
    engine.start()
    try:
        await asyncio.gather(*(engine.texts.submit([torch.zeros(8)]) for _ in range(4)))
        # Half of the next wave, then the other half 60 ms later: past the 20 ms quiet window, within
        # the cap and half a forward pass of the slow model (200 ms), beyond half of the free one's.
        first = [asyncio.create_task(engine.texts.submit([torch.zeros(8)])) for _ in range(2)]
        await asyncio.sleep(0.06)
        await asyncio.gather(*first, *(engine.texts.submit([torch.ones(8)]) for _ in range(2)))
    finally:
        await engine.stop()
    assert model.text_batches == batches


@pytest.mark.parametrize(
    ("one_request", "batches"), [(True, [4, 1, 1]), (False, [4, 2])], ids=["four-items-one-request", "four-clients"]
)
async def test_engine_counts_a_wave_in_callers_not_items(one_request, batches):
    model = FakeEmbedder(t0=0.4)
    engine = Engine(model, max_batch=64, max_wait_ms=20)  # 160 ms cap
    engine.start()
    try:
        caller = object() if one_request else None
        await asyncio.gather(*(engine.texts.submit([torch.zeros(8)], caller=caller) for _ in range(4)))
        # A lone request, then another 60 ms later: past the 20 ms quiet window, within the cap and half
        # a forward pass (200 ms). After one request of four items, a lone one is a complete wave and
        # goes at once; after four clients, it waits for the others, and the next one joins it.
        first = asyncio.create_task(engine.texts.submit([torch.zeros(8)]))
        await asyncio.sleep(0.06)
        await asyncio.gather(first, engine.texts.submit([torch.ones(8)]))
    finally:
        await engine.stop()
    assert model.text_batches == batches


@pytest.mark.parametrize(("announced", "batches"), [(True, [3]), (False, [1, 2])])
async def test_engine_waits_past_the_cap_for_items_announced_as_being_prepared(announced, batches):
    model = FakeEmbedder(t0=0.4)
    engine = Engine(model, max_batch=64, max_wait_ms=2)  # 16 ms cap without announcements
    engine.start()

    async def prepared_late() -> None:
        with engine.texts.expecting(1) if announced else contextlib.nullcontext():
            await asyncio.sleep(0.1)  # past the 16 ms cap, within half a forward pass (200 ms)
        await engine.texts.submit([torch.ones(8)])

    try:
        await _warm(engine)
        late = [asyncio.create_task(prepared_late()) for _ in range(2)]
        await asyncio.sleep(0)  # the announcements come first, as the pipeline makes them
        await asyncio.gather(engine.texts.submit([torch.zeros(8)]), *late)
    finally:
        await engine.stop()
    assert model.text_batches[1:] == batches


async def test_engine_stops_waiting_for_announced_items_after_half_a_forward_pass():
    model = FakeEmbedder(t0=0.05)
    engine = Engine(model, max_batch=64, max_wait_ms=2)
    engine.start()
    release = asyncio.Event()

    async def announced_never_ready() -> None:
        with engine.texts.expecting(1):
            await release.wait()
        await engine.texts.submit([torch.ones(8)])

    try:
        await _warm(engine)
        stuck = asyncio.create_task(announced_never_ready())
        await asyncio.sleep(0)
        # The item already queued is computed although the announced one never comes.
        await asyncio.wait_for(engine.texts.submit([torch.zeros(8)]), 5)
        release.set()
        await stuck
    finally:
        await engine.stop()
    assert model.text_batches[1:] == [1, 1]


def test_http_requests_still_downloading_join_the_batch_of_those_ready(image_server):
    model = FakeEmbedder(t0=0.5)
    with run_service(tiny_settings(), embedder_factory=lambda s: model) as svc:
        call(svc.base, "/v1/embed/image", {"image_url": image_server.url("img/photo0.jpg")})
        # Downloads finishing 80 ms apart: past the 16 ms gather cap, within half a forward pass (250 ms).
        urls = [image_server.url("img/photo1.jpg")] + [
            image_server.url(f"slow/photo{i}.jpg?delay=0.08") for i in (2, 3)
        ]
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda u: call(svc.base, "/v1/embed/image", {"image_url": u}), urls))
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert model.image_batches == [1, 3]


def test_http_single_images_after_a_batch_request_are_not_held_for_its_size(image_server):
    # One request of four images is one client: the lone requests after it go at once, not after
    # waiting (up to the 160 ms cap here) for three more clients that are not coming.
    model = FakeEmbedder(t0=0.4)
    with run_service(tiny_settings(engine_max_wait_ms=20), embedder_factory=lambda s: model) as svc:
        urls = [image_server.url(f"img/photo{i}.jpg") for i in range(4)]
        status, _, _ = call(svc.base, "/v1/embed/image-batch", {"image_urls": urls})
        with ThreadPoolExecutor(2) as pool:
            # Photos the batch did not hold, or the embedding cache would answer them.
            first = pool.submit(call, svc.base, "/v1/embed/image", {"image_url": image_server.url("img/photo4.jpg")})
            time.sleep(0.06)
            second = pool.submit(call, svc.base, "/v1/embed/image", {"image_url": image_server.url("img/photo5.jpg")})
            answers = [first.result(), second.result()]
    assert [status] + [a[0] for a in answers] == [200, 200, 200]
    assert model.image_batches == [4, 1, 1]
