"""Each model its own engine and thread, loads one at a time without holding up requests to the others, and an
idle TTL that unloads a model until the next request loads it again (MODELS)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.settings import Settings
from tests.support.api import call
from tests.support.fake_model import FakeEmbedder
from tests.support.metrics import scrape, value
from tests.support.served import models_settings, signed_call
from tests.support.service import run_service


def _spec(name: str, **extra: object) -> dict[str, object]:
    return {"model": "clip-tiny", "pretrained": "none", "name": name, **extra}


def _named(make: Callable[[str], FakeEmbedder]) -> Callable[[Settings], FakeEmbedder]:
    """Return a factory that builds each model by its served name (what the registry hands a loader)."""
    return lambda settings: make(settings.served_models()[0].served_name)


def _text(base: str, model: str, text: str = "a cat") -> tuple[int, dict, dict[str, str]]:
    return signed_call(base, "/v1/embed/text", {"text": text, "model": model})


def _until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_models_a_busy_model_holds_up_no_other():
    gate = threading.Event()
    made: dict[str, FakeEmbedder] = {}

    def make(name: str) -> FakeEmbedder:
        made[name] = FakeEmbedder(gate=gate if name == "slow" else None)
        return made[name]

    models = [_spec("fast"), _spec("slow")]
    with run_service(models_settings(models), embedder_factory=_named(make)) as svc, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_text, svc.base, "slow")
        _until(made["slow"].running.is_set, "the slow model's forward pass")  # held there by the gate
        fast = _text(svc.base, "fast")
        slow_done_first = slow.done()
        gate.set()
        slow_answer = slow.result(30)
    assert (fast[0], fast[1]["model"], slow_done_first) == (200, "fast", False)
    assert (slow_answer[0], slow_answer[1]["model"]) == (200, "slow")


def test_models_load_one_at_a_time_without_holding_up_the_others():
    release = threading.Event()
    loads: list[str] = []

    def make(name: str) -> FakeEmbedder:
        loads.append(name)
        if name == "late":
            release.wait(30)
        return FakeEmbedder()

    models = [_spec("early"), _spec("late", lazy=True), _spec("later", lazy=True)]
    with run_service(models_settings(models), embedder_factory=_named(make)) as svc:
        late = _text(svc.base, "late")
        later = _text(svc.base, "later")
        _until(lambda: loads == ["early", "late"], "the load of late")
        early = _text(svc.base, "early")
        health = call(svc.base, "/health")
        loaded_while_late_loads = list(loads)
        release.set()
        _until(lambda: _text(svc.base, "later")[0] == 200, "later served")
        _until(lambda: _text(svc.base, "late")[0] == 200, "late served")
    assert [(s, b["error"]["code"]) for s, b, _ in (late, later)] == [(503, "model_loading")] * 2
    assert int(late[2]["retry-after"]) >= 1
    assert early[0] == 200 and health[0] == 200  # served, and ready: lazy models keep no one waiting
    assert loaded_while_late_loads == ["early", "late"]  # `later` waited for `late` to finish loading
    assert loads == ["early", "late", "later"]


def test_models_an_idle_model_is_unloaded_and_the_next_request_loads_it_again():
    models = [_spec("main"), _spec("idle", idle_ttl_s=0.3)]
    with run_service(models_settings(models)) as svc:
        first = _text(svc.base, "idle", "first")
        _until(lambda: not _card(svc.base, "idle")["loaded"], "idle unloaded")
        card = _card(svc.base, "idle")
        health = call(svc.base, "/health")
        reloading = _text(svc.base, "idle", "second")
        _until(lambda: _text(svc.base, "idle", "third")[0] == 200, "idle loaded again")
        loads = value(scrape(svc.base), "clip_model_loads_total", model="idle", outcome="loaded")
        main_loads = value(scrape(svc.base), "clip_model_loads_total", model="main", outcome="loaded")
    assert first[0] == 200
    assert (card["status"], card["memory_bytes"], card["dim"]) == ("unloaded", 0, 64)  # the last load's figures stay
    assert (health[0], health[1]["models"]["idle"]["on_demand"]) == (200, True)
    assert (reloading[0], reloading[1]["error"]["code"]) == (503, "model_loading")
    assert (loads, main_loads) == (2, 1)


def _card(base: str, name: str) -> dict:
    status, body, _ = call(base, f"/v1/models/{name}")
    assert status == 200, body
    return body


def test_models_health_waits_for_every_model_loaded_at_start_and_names_it():
    release = threading.Event()

    def make(name: str) -> FakeEmbedder:
        if name == "second":
            release.wait(30)
        return FakeEmbedder()

    models = [_spec("first"), _spec("second")]
    with run_service(models_settings(models), embedder_factory=_named(make), wait_ready=False) as svc:
        _until(lambda: _text(svc.base, "first")[0] == 200, "first served")
        status, body, headers = call(svc.base, "/health")
        second = _text(svc.base, "second")
        release.set()
        _until(lambda: call(svc.base, "/health")[0] == 200, "ready")
    assert (status, body["status"], headers["retry-after"]) == (503, "loading", "1")
    assert body["reason"] == "1 of 2 models ready: model second is loading"
    assert (second[0], second[1]["error"]["code"]) == (503, "model_loading")


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([], "MODELS is an empty list"),
        ([_spec("a"), _spec("a")], "MODELS names 'a' twice"),
        ([_spec("a", default=True), _spec("b", default=True)], "MODELS marks 2 defaults (a, b)"),
        ([_spec("a", lazy=True)], "a is the default (the first entry, none says default) but lazy"),
        ([{"model": "ViT-B-32"}], "ViT-B-32: give pretrained"),
        ([{"model": "local-dir:/m/x", "pretrained": "none"}], "a local-dir: folder holds its own weights"),
        ([_spec("a b")], "model names are 1-100 characters"),
        ([_spec("a", towers="audio")], "towers"),
    ],
)
def test_models_settings_refuse_what_cannot_be_served(models, message):
    with pytest.raises(ValueError, match=_escaped(message)):
        models_settings(models)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_models_settings_ignore_clip_model_beside_models_and_say_so():
    settings = models_settings([_spec("a")], clip_model="ViT-L-14", clip_pretrained="laion2b_s34b_b79k")
    assert [spec.served_name for spec in settings.served_models()] == ["a"]
    assert settings.startup_warnings()[0] == "CLIP_MODEL=ViT-L-14 is ignored: MODELS lists the models served"
    with pytest.raises(ValueError, match="MODELS and EMBEDDINGS_MODEL_ALIAS are both set"):
        models_settings([_spec("a")], embeddings_model_alias="clip")


def test_models_an_unloaded_model_is_let_go_whole():
    # Nothing keeps the unloaded model alive (engine, pipeline, caches, threads): its memory can go back.
    import gc
    import weakref

    made: list[weakref.ref[FakeEmbedder]] = []

    def make(name: str) -> FakeEmbedder:
        embedder = FakeEmbedder()
        if name == "idle":
            made.append(weakref.ref(embedder))
        return embedder

    models = [_spec("main"), _spec("idle", idle_ttl_s=0.2)]
    with run_service(models_settings(models), embedder_factory=_named(make)) as svc:
        assert _text(svc.base, "idle")[0] == 200
        _until(lambda: not _card(svc.base, "idle")["loaded"], "idle unloaded")
        _until(lambda: gc.collect() >= 0 and made[0]() is None, "the unloaded model collected", seconds=10)
        main = _text(svc.base, "main")
    assert main[0] == 200
