"""Backpressure (MAX_QUEUED_ITEMS) and request deadlines (REQUEST_TIMEOUT_S)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from app.errors import Overloaded
from app.inference.engine import Engine
from app.ops.admission import Admission
from app.ops.metrics import Metrics
from tests.support.api import call
from tests.support.data import jpeg_bytes, tiny_settings
from tests.support.fake_model import FakeEmbedder
from tests.support.imageserver import ImageServer
from tests.support.metrics import scrape, value
from tests.support.service import run_service


def _wait_until(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_admission_refuses_a_request_whole_and_frees_room_after():
    admission = Admission(limit=3)
    with admission.admit(2):
        with pytest.raises(Overloaded, match="at capacity"), admission.admit(2):
            pass
        assert admission.current == 2
        with admission.admit(1):
            assert admission.current == 3
    assert admission.current == 0


def test_overload_refuses_with_503_retry_after_while_admitted_requests_succeed():
    settings = tiny_settings(max_queued_items=2, max_batch_size=2)
    with ImageServer() as images, run_service(settings, embedder_factory=lambda s: FakeEmbedder()) as svc:
        images.files["a.jpg"] = jpeg_bytes(64, 48, 1)
        gated = images.url("gated/a.jpg")
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(call, svc.base, "/v1/embed/image", {"image_url": gated}) for _ in range(2)]
            _wait_until(lambda: images.count("/gated/") == 2)
            single = call(svc.base, "/v1/embed/image", {"image_url": images.url("img/a.jpg")})
            batch = call(svc.base, "/v1/embed/image-batch", {"image_urls": [images.url("img/a.jpg")] * 2})
            text = call(svc.base, "/v1/embed/text", {"text": "no room"})
            full = scrape(svc.base)
            images.gate.set()
            answers = [f.result(30) for f in held]
        after = call(svc.base, "/v1/embed/image-batch", {"image_urls": [images.url("img/a.jpg")] * 2})
        samples = scrape(svc.base)
    for status, body, headers in (single, batch, text):
        assert (status, body["error"]["code"], headers["retry-after"]) == (503, "overloaded", "1")
    assert value(full, "clip_admitted_items") == 2
    assert [status for status, _, _ in answers] == [200, 200]
    assert after[0] == 200 and after[1]["succeeded"] == 2
    assert value(samples, "clip_errors_total", code="overloaded") == 3
    assert value(samples, "clip_admitted_items") == 0
    assert images.count("/img/") == 2  # only the last batch downloaded: the refused requests never did


async def test_engine_drops_items_past_their_deadline_before_the_model():
    model = FakeEmbedder()
    metrics = Metrics()
    engine = Engine(model, max_batch=8, max_wait_ms=0, observer=metrics)
    engine.start()
    try:
        with pytest.raises(Overloaded, match="deadline passed"):
            await engine.images.submit([torch.zeros(4, 4, 3)], deadline=time.monotonic() - 1)
        (vector,) = await engine.images.submit([torch.ones(4, 4, 3)], deadline=time.monotonic() + 60)
    finally:
        await engine.stop()
    assert model.image_batches == [1]  # only the live item reached the model
    assert vector.shape == (8,)
    assert metrics.dropped_items.labels("deadline")._value.get() == 1


def test_request_past_its_deadline_gets_503_and_never_reaches_the_model(image_server):
    gate = threading.Event()
    model = FakeEmbedder(gate=gate)
    settings = tiny_settings(request_timeout_s=0.3)
    url = image_server.url("img/photo0.jpg")
    with run_service(settings, embedder_factory=lambda s: model) as svc, ThreadPoolExecutor(2) as pool:
        first = pool.submit(call, svc.base, "/v1/embed/image", {"image_url": url})
        assert model.running.wait(10)  # the first request holds the model thread
        second = pool.submit(call, svc.base, "/v1/embed/image", {"image_url": image_server.url("img/photo1.jpg")})
        _wait_until(lambda: call(svc.base, "/health")[1]["engine"]["images"]["queue_depth"] == 1)
        time.sleep(0.4)  # the queued request's deadline (0.3 s) passes while the model is busy
        gate.set()
        first_answer, second_answer = first.result(30), second.result(30)
        samples = scrape(svc.base)
    assert first_answer[0] == 200  # dispatched before its deadline: finished even though it ran long
    assert (second_answer[0], second_answer[1]["error"]["code"]) == (503, "overloaded")
    assert "deadline" in second_answer[1]["error"]["message"]
    assert model.image_batches == [1]
    assert value(samples, "clip_dropped_items_total", reason="deadline") == 1


def test_settings_refuse_a_queue_smaller_than_a_batch():
    with pytest.raises(ValueError, match="MAX_QUEUED_ITEMS=8 is below MAX_BATCH_SIZE=16"):
        tiny_settings(max_queued_items=8, max_batch_size=16)
