"""Shared state across real processes: pods on one real Redis share nonces, cached vectors and rate limits,
and a pod rides out a Redis killed under load.

Every server is `python -m app` (WORKERS=1, the tiny model) on 127.0.0.1; "pod A" and "pod B" are two of
them on different ports pointing at the same STATE_URL, as two pods of a deployment are.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from clip_client import ClipPodClient, RetryPolicy
from clip_client.signing import new_nonce, signed_headers, text_payload_id

from app.inference.cache import image_key, text_key
from app.pipeline import INLINE_HASH_BYTES
from scripts.procs import PYTHONPATH, ROOT, app_server, free_port
from tests.support.api import SECRET, call
from tests.support.data import TINY_APP_ENV, jpeg_bytes
from tests.support.imageserver import ImageServer
from tests.support.logs import json_log
from tests.support.metrics import delta, scrape, value
from tests.support.pod import Senders, redis_or_skip
from tests.support.redis import RedisServer

TEXT_PATH = "/v1/embed/text"
IMAGE_PATH = "/v1/embed/image"
BATCH_PATH = "/v1/embed/image-batch"
# The rate-limited pods: a burst of one full batch, refilled at two items a second.
RATE = 2
BURST = 4
# One signing key per rate-limit test, so that each starts with a full bucket whatever ran before it.
COUNT_SECRET = "rate-count-secret-0123456789abcdef"
CLIENT_SECRET = "rate-client-secret-0123456789abcdef"
# Bounds on the waits for something to happen; they only keep a broken run from hanging.
WAIT_S = 60.0

POD_ENV = TINY_APP_ENV | {
    "WORKERS": "1",
    "CPU_WORKERS": "1",
    # Generous: on a loaded test machine a slow answer from a live store must not turn into a 503.
    "STATE_TIMEOUT_S": "5",
}


@pytest.fixture(scope="module")
def redis_executable() -> str:
    return redis_or_skip()


@pytest.fixture(scope="module")
def redis_server(redis_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(redis_executable, tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@contextmanager
def pod(log_path: Path, state_url: str, **env: str) -> Iterator[str]:
    """Run one `python -m app` on STATE_URL `state_url`; yield its base URL once /health is 200."""
    with app_server(POD_ENV | {"STATE_URL": state_url} | env, log=log_path, timeout_s=120) as (_, base):
        yield base


@pytest.fixture(scope="module")
def pods(
    redis_server: RedisServer, checkpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """Pods A and B on one Redis, with no in-process cache: a vector one answers without computing it
    can only have come through Redis. They load one checkpoint: random weights differ in every process,
    and pods with different weights share no vectors."""
    folder = tmp_path_factory.mktemp("pods")
    env = {"CACHE_MAX_ENTRIES": "0", "CLIP_PRETRAINED": checkpoint}
    with (
        pod(folder / "a.log", redis_server.url, **env) as a,
        pod(folder / "b.log", redis_server.url, **env) as b,
    ):
        yield a, b


@pytest.fixture(scope="module")
def limited_pods(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Pods A and B on one Redis with a rate limit of RATE items/s and bursts of BURST per signing key."""
    folder = tmp_path_factory.mktemp("limited")
    env = {
        "EMBEDDING_HMAC_SECRET": f"{SECRET},{COUNT_SECRET},{CLIENT_SECRET}",
        "RATE_LIMIT_ITEMS_PER_S": str(RATE),
        "RATE_LIMIT_BURST": str(BURST),
        "MAX_BATCH_SIZE": str(BURST),
    }
    with (
        pod(folder / "a.log", redis_server.url, **env) as a,
        pod(folder / "b.log", redis_server.url, **env) as b,
    ):
        yield a, b


def until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Return once `check()` is true; fail, saying `what` never happened, after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.02)


def log_messages(log_path: Path) -> list[str]:
    return [entry["msg"] for entry in json_log(log_path)]


# --- nonces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [(0, 1), (1, 0)], ids=["a_then_b", "b_then_a"])
def test_pod_state_nonce_accepted_by_one_pod_is_refused_by_the_other(pods, first, second):
    body = {"text": f"replayed across pods {first}{second}"}
    headers = signed_headers(SECRET, "POST", TEXT_PATH, text_payload_id(body["text"]), nonce=new_nonce())
    accepted = call(pods[first], TEXT_PATH, body, secret=None, headers=headers)
    replayed = call(pods[second], TEXT_PATH, body, secret=None, headers=headers)
    fresh = signed_headers(SECRET, "POST", TEXT_PATH, text_payload_id(body["text"]), nonce=new_nonce())
    resigned = call(pods[second], TEXT_PATH, body, secret=None, headers=fresh)
    assert (accepted[0], replayed[0], replayed[1]["error"]["code"]) == (200, 401, "nonce_reused")
    assert resigned[0] == 200  # the same request with a nonce of its own: it was the nonce that was refused


# --- embedding cache ------------------------------------------------------------------------------------


# A small image is hashed on the event loop and decoded beside the lookup; a large one (over
# app.pipeline.INLINE_HASH_BYTES) is hashed on the pool and decoded only after a miss.
@pytest.mark.parametrize(("kind", "size"), [("text", None), ("image", (64, 48)), ("image", (800, 600))])
def test_pod_state_vector_computed_by_one_pod_is_served_by_the_other_from_redis(pods, redis_server, images, kind, size):
    a, b = pods
    if size is None:
        text = "a caption only pod A has embedded"
        path, body, key = TEXT_PATH, {"text": text}, text_key(text)
    else:
        data = jpeg_bytes(*size, seed=16, quality=100)
        assert (len(data) > INLINE_HASH_BYTES) == (size[0] > 64)
        images.files[f"shared-{size[0]}.jpg"] = data
        path, body, key = IMAGE_PATH, {"image_url": images.url(f"img/shared-{size[0]}.jpg")}, image_key(data)
    queue = f"{kind}s"  # the engine's queue: one forward pass counts once in clip_batch_size
    a_before, b_before = scrape(a), scrape(b)
    from_a = call(a, path, body)
    store = redis.Redis.from_url(redis_server.url)
    try:
        # Pod A writes the vector in the background once it has answered.
        until(lambda: any(store.scan_iter(match=f"clip:emb:*:{key}")), f"pod A's write of {key} to Redis")
    finally:
        store.close()
    from_b = call(b, path, body)
    a_after, b_after = scrape(a), scrape(b)
    assert (from_a[0], from_b[0]) == (200, 200)
    assert from_b[1]["embedding"] == from_a[1]["embedding"]
    # Pod A computed it...
    assert delta(a_before, a_after, "clip_cache_misses_total", kind=kind) == 1
    assert delta(a_before, a_after, "clip_batch_size_count", queue=queue) == 1
    # ...and pod B, with no cache of its own, found it in Redis and ran no forward pass.
    assert delta(b_before, b_after, "clip_cache_hits_total", kind=kind) == 1
    assert delta(b_before, b_after, "clip_cache_misses_total", kind=kind) == 0
    assert delta(b_before, b_after, "clip_batch_size_count", queue=queue) == 0
    assert delta(b_before, b_after, "clip_embeddings_total", kind=kind) == 1


def redis_entries(redis_url: str, key: str) -> list[bytes]:
    """Return the names of the cached vectors of in-process cache key `key`, under every model tag."""
    store = redis.Redis.from_url(redis_url)
    try:
        return sorted(store.scan_iter(match=f"clip:emb:*:{key}"))
    finally:
        store.close()


def embed_without_sharing(base: str, path: str, body: dict, kind: str) -> list[float]:
    """Embed on `base`; check that it computed the vector itself, nothing coming from the cache."""
    before = scrape(base)
    status, answer, _ = call(base, path, body)
    after = scrape(base)
    assert status == 200
    assert delta(before, after, "clip_cache_hits_total", kind=kind) == 0
    assert delta(before, after, "clip_cache_misses_total", kind=kind) == 1
    return answer["embedding"]


def test_pod_state_pods_differing_only_in_fast_decode_share_no_vectors(
    pods, redis_server, images, checkpoint, tmp_path
):
    a = pods[0]  # FAST_DECODE=1, the default
    data = jpeg_bytes(800, 600, seed=21, quality=100)  # over twice the input size: FAST_DECODE matters
    images.files["fast-decode.jpg"] = data
    body, key = {"image_url": images.url("img/fast-decode.jpg")}, image_key(data)
    from_a = embed_without_sharing(a, IMAGE_PATH, body, "image")
    until(lambda: len(redis_entries(redis_server.url, key)) == 1, "pod A's write to Redis")
    env = {"CACHE_MAX_ENTRIES": "0", "CLIP_PRETRAINED": checkpoint, "FAST_DECODE": "0"}
    with pod(tmp_path / "full-decode.log", redis_server.url, **env) as full:
        from_full = embed_without_sharing(full, IMAGE_PATH, body, "image")
        until(lambda: len(redis_entries(redis_server.url, key)) == 2, "the FAST_DECODE=0 pod's write to Redis")
    assert from_full != from_a


def test_pod_state_checkpoint_replaced_at_the_same_path_is_a_new_embedding_space(redis_server, tmp_path):
    import open_clip
    import torch

    from app.inference.model import CONFIG_DIR

    def save(seed: int) -> None:
        open_clip.add_model_config(CONFIG_DIR)
        torch.manual_seed(seed)
        torch.save(open_clip.create_model("clip-tiny").state_dict(), path)

    path = tmp_path / "model.pt"
    text = "a caption embedded before and after the checkpoint changed"
    env = {"CACHE_MAX_ENTRIES": "0", "CLIP_PRETRAINED": str(path)}
    save(seed=5)
    with pod(tmp_path / "old.log", redis_server.url, **env) as old:
        from_old = embed_without_sharing(old, TEXT_PATH, {"text": text}, "text")
        until(lambda: len(redis_entries(redis_server.url, text_key(text))) == 1, "the first pod's write to Redis")
    save(seed=6)  # the same path, other weights
    with pod(tmp_path / "new.log", redis_server.url, **env) as new:
        from_new = embed_without_sharing(new, TEXT_PATH, {"text": text}, "text")
    assert from_new != from_old


@pytest.mark.parametrize("size", [(64, 48), (800, 600)])
def test_pod_state_broken_image_is_refused_on_either_cache_path(pods, images, size):
    data = jpeg_bytes(*size, seed=18, quality=100)
    images.files[f"broken-{size[0]}.jpg"] = data[: len(data) // 2]  # a truncated JPEG: decode fails
    status, body, _ = call(pods[0], IMAGE_PATH, {"image_url": images.url(f"img/broken-{size[0]}.jpg")})
    assert (status, body["error"]["code"]) == (422, "invalid_image")


# --- rate limit -----------------------------------------------------------------------------------------


def test_pod_state_rate_limit_is_one_budget_for_both_pods(limited_pods):
    a, b = limited_pods
    started = time.monotonic()
    answers = [
        (base, *call(base, TEXT_PATH, {"text": f"rate {i}"}, secret=COUNT_SECRET))
        for i, base in zip(range(24), itertools.cycle(limited_pods), strict=False)
    ]
    elapsed = time.monotonic() - started
    accepted = [base for base, status, _, _ in answers if status == 200]
    refused = [(base, body, headers) for base, status, body, headers in answers if status != 200]
    # GCRA admits at most the burst plus the rate over any span; each pod counting alone would admit twice that.
    assert BURST <= len(accepted) <= BURST + RATE * elapsed
    assert set(accepted) == {a, b} and {base for base, _, _ in refused} == {a, b}
    # One item at RATE items/s is back within a second: Retry-After rounds up to whole seconds.
    assert {(body["error"]["code"], headers.get("retry-after")) for _, body, headers in refused} == {
        ("rate_limited", "1")
    }


async def test_pod_state_client_waits_out_retry_after_when_rate_limited(limited_pods, images):
    a, b = limited_pods
    names = [f"limited-{i}.jpg" for i in range(BURST)]
    for seed, name in enumerate(names):
        images.files[name] = jpeg_bytes(48, 48, seed=100 + seed)
    urls = [images.url(f"img/{name}") for name in names]
    # Spend the key's budget on pod B until it refuses: a full batch on pod A then waits for BURST items to return.
    spent = 0
    while call(b, TEXT_PATH, {"text": f"drain {spent}"}, secret=CLIENT_SECRET)[0] == 200:
        spent += 1
        assert spent < 100, "pod B never refused the key"
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    # No backoff of its own (base 0): every wait is the server's Retry-After.
    policy = RetryPolicy(attempts=3, base_s=0, sleep=sleep)
    async with ClipPodClient(a, CLIENT_SECRET, retry=policy, batch_size=BURST) as client:
        results = await client.embed_images(urls)
    assert [r.ok for r in results] == [True] * BURST
    # Refused once, then admitted after exactly the wait the server named (whole seconds, at least one).
    assert len(waits) == 1 and waits[0] in {1.0, 2.0}, waits


# --- Redis killed under load ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request of the load: with a nonce or not, the phases it was sent and answered in, and the answer."""

    nonce: bool
    sent: str
    answered: str
    status: int  # 0: no HTTP answer (a client timeout or a connection error; `code` says which)
    code: str | None
    retry_after: str | None


class Load(Senders):
    """Threads that send signed text requests to `base` until stopped, recording every answer with the phase
    (set by the test as it goes) in which it was sent and answered. Use as a context manager."""

    def __init__(self, base: str, *, with_nonce: int, without_nonce: int, timeout_s: float) -> None:
        # The request in flight ends within the client's timeout, so the end always comes in time.
        super().__init__(with_nonce + without_nonce, join_s=timeout_s + 5)
        self.base = base
        self.timeout_s = timeout_s
        self.phase = "before"
        self._with_nonce = with_nonce
        self._texts = itertools.count()
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def send(self, index: int) -> None:
        nonce = index < self._with_nonce
        # A new text every time: each one misses the cache and goes to the store and the model.
        text = f"load {index} {next(self._texts)}"
        headers = signed_headers(SECRET, "POST", TEXT_PATH, text_payload_id(text), nonce=new_nonce() if nonce else None)
        sent = self.phase
        try:
            status, body, answer = call(
                self.base, TEXT_PATH, {"text": text}, secret=None, headers=headers, timeout=self.timeout_s
            )
            error = body.get("error") if isinstance(body, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            outcome = Outcome(nonce, sent, self.phase, status, code, answer.get("retry-after"))
        except (OSError, ValueError) as exc:
            # No answer (a timeout, a reset) or not JSON: recorded, so that the test fails on it, not the thread.
            outcome = Outcome(nonce, sent, self.phase, 0, type(exc).__name__, None)
        with self._lock:
            self._outcomes.append(outcome)

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def answered(self, phase: str, *, nonce: bool) -> list[Outcome]:
        """Return the outcomes of the requests sent and answered within `phase`, with or without a nonce."""
        return [o for o in self.outcomes if o.sent == o.answered == phase and o.nonce == nonce]

    def wait_for(self, count: int, phase: str, *, nonce: bool) -> None:
        until(lambda: len(self.answered(phase, nonce=nonce)) >= count, f"{count} answers in phase {phase!r}")


def test_pod_state_redis_killed_under_load_fails_closed_for_nonces_then_recovers(redis_executable, tmp_path):
    log_path = tmp_path / "pod.log"
    with RedisServer(redis_executable, tmp_path) as store, pod(log_path, store.url) as base:
        with Load(base, with_nonce=6, without_nonce=2, timeout_s=10) as load:
            load.wait_for(16, "before", nonce=True)
            load.phase = "killing"
            store.kill()
            load.phase = "down"
            load.wait_for(16, "down", nonce=True)
            load.wait_for(4, "down", nonce=False)
            down_health, down_live = call(base, "/health"), call(base, "/live")
            until(lambda: value(scrape(base), "clip_shared_state_up") == 0, "clip_shared_state_up 0")
            down_metrics = scrape(base)
            until(lambda: any("is unreachable" in m for m in log_messages(log_path)), "the log saying so")
            load.phase = "restarting"
            store.start()  # a fresh, empty Redis on the same port; the pod is not restarted
            load.phase = "after"
            load.wait_for(16, "after", nonce=True)
            load.wait_for(4, "after", nonce=False)
            up_health = call(base, "/health")
            until(lambda: value(scrape(base), "clip_shared_state_up") == 1, "clip_shared_state_up 1")
            until(lambda: any("answers again" in m for m in log_messages(log_path)), "the log saying so")
        outcomes = load.outcomes
    assert load.running() == 0
    # Every request got an HTTP answer within its deadline (no timeout, no reset), and never a 500.
    assert {o.status for o in outcomes} <= {200, 503}, sorted({(o.status, o.code) for o in outcomes})
    # A 503 is the clear one (unavailable, Retry-After), and only a request with a nonce ever gets it.
    assert {(o.nonce, o.code, o.retry_after) for o in outcomes if o.status == 503} <= {(True, "unavailable", "1")}
    # With a nonce: served before, refused (fail closed) while Redis is down, served again once it is back.
    statuses = {phase: {o.status for o in load.answered(phase, nonce=True)} for phase in ("before", "down", "after")}
    assert statuses == {"before": {200}, "down": {503}, "after": {200}}
    # Without a nonce nothing needs the store: served throughout, the cache failing open to a miss.
    assert {o.status for o in outcomes if not o.nonce} == {200}
    # Readiness says the store is unreachable (signed requests would get 503), liveness stays 200, then ok again.
    assert (down_health[0], down_health[1]["status"], down_health[1]["shared_state"]) == (
        503,
        "unavailable",
        "unreachable",
    )
    assert (down_live[0], value(down_metrics, "clip_ready")) == (200, 0)
    assert (up_health[0], up_health[1]["status"], up_health[1]["shared_state"]) == (200, "ok", "ok")
    assert value(down_metrics, "clip_shared_state_failures_total") > 0


# --- start-up -------------------------------------------------------------------------------------------


def test_pod_state_workers_without_state_url_refuse_to_start_naming_it():
    env = {k: v for k, v in os.environ.items() if k != "STATE_URL"} | {
        "PYTHONPATH": PYTHONPATH,
        "EMBEDDING_HMAC_SECRET": SECRET,
        "WORKERS": "2",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "WORKERS=2 needs STATE_URL" in proc.stderr and "Traceback" not in proc.stderr
