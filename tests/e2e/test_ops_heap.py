"""The server process settles its heap once the model serves (python -m app passes settle_heap)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest

from app.inference.model import ModelLoadError
from app.ops.heap import GEN0_THRESHOLD, settle_heap
from app.ops.lifecycle import Lifecycle
from tests.support.api import call
from tests.support.data import tiny_settings
from tests.support.fake_model import FakeEmbedder
from tests.support.service import run_service


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_heap_freezes_what_exists_and_collects_young_objects_less_often(restored_gc):
    gc.unfreeze()
    existing = len(gc.get_objects())
    settle_heap()
    assert gc.get_freeze_count() >= existing // 2
    # What start-up built is out of the generations a collection walks.
    assert len(gc.get_objects(generation=2)) < existing // 100
    assert gc.get_threshold()[0] == GEN0_THRESHOLD


def test_create_app_calls_on_ready_once_the_model_is_loaded_before_it_reports_ready():
    lifecycle = Lifecycle()
    not_ready_yet: list[bool] = []

    def on_ready() -> None:
        assert lifecycle.services is not None
        not_ready_yet.append(lifecycle.services.ready() is None)

    with run_service(
        tiny_settings(), embedder_factory=lambda s: FakeEmbedder(), on_ready=on_ready, lifecycle=lifecycle
    ) as svc:
        status, _, _ = call(svc.base, "/health")
    assert not_ready_yet == [True]
    assert status == 200


def test_create_app_fails_start_up_when_on_ready_raises():
    def on_ready() -> None:
        raise RuntimeError("settling failed")

    with run_service(
        tiny_settings(), embedder_factory=lambda s: FakeEmbedder(), wait_ready=False, on_ready=on_ready
    ) as svc:
        deadline = time.monotonic() + 10
        while call(svc.base, "/health")[1].get("status") != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body, _ = call(svc.base, "/health")
    assert (status, body["status"]) == (503, "failed")
    assert "RuntimeError: settling failed" in body["reason"]


def test_create_app_does_not_call_on_ready_when_the_model_fails_to_load():
    calls: list[str] = []

    def failing(settings):
        raise ModelLoadError("no weights")

    with run_service(
        tiny_settings(), embedder_factory=failing, wait_ready=False, on_ready=lambda: calls.append("ready")
    ) as svc:
        deadline = time.monotonic() + 10
        while call(svc.base, "/health")[1].get("status") != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body, _ = call(svc.base, "/health")
    assert (status, body["status"]) == (503, "failed")
    assert calls == []
