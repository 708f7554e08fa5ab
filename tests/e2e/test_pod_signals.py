"""Stopping a pod (WORKERS=2) as an operator does: signals to the supervisor with requests in flight."""

from __future__ import annotations

import http.client
import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from clip_client.signing import image_payload_id, signed_headers, text_payload_id

from tests.support.api import SECRET, call
from tests.support.data import jpeg_bytes
from tests.support.imageserver import ImageServer
from tests.support.logs import json_log
from tests.support.metrics import scrape, value
from tests.support.pod import alive, answered_by, health_until, pod, redis_or_skip, until, worker_pids
from tests.support.redis import RedisServer

IMAGE_PATH = "/v1/embed/image"
TEXT_PATH = "/v1/embed/text"


def _at(entry: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(entry["ts"]))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RedisServer(redis_or_skip(), tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        server.files["a.jpg"] = jpeg_bytes(96, 64, 3)
        yield server


# Docker and Kubernetes send SIGTERM, a terminal's Ctrl+C SIGINT, Ctrl+\ SIGQUIT: each one drains.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["term", "int", "quit"])
def test_pod_stop_signal_drains_every_worker_and_exits_0(redis_url, images, tmp_path, sig):
    log_path = tmp_path / "server.log"
    with pod(log_path, redis_url, SHUTDOWN_GRACE_S="30") as (proc, base):
        url = images.url("gated/a.jpg")
        with ThreadPoolExecutor(6) as pool:
            in_flight = [pool.submit(call, base, IMAGE_PATH, {"image_url": url}, timeout=60) for _ in range(6)]
            until(lambda: images.count("/gated/") == 6, "the requests reaching the image server")
            proc.send_signal(sig)
            health = health_until(base, lambda s, b: s == 503, timeout_s=10)
            images.gate.set()
            answers = [f.result(60) for f in in_flight]
        exit_code = proc.wait(60)
    assert (health["status"], [status for status, _, _ in answers], exit_code) == ("draining", [200] * 6, 0)
    # Every worker drained on the SIGTERM the supervisor sent it, whatever the supervisor received.
    draining = {e["pid"] for e in json_log(log_path) if e["msg"] == "signal 15: draining before shutdown"}
    answered = {e["pid"] for e in json_log(log_path) if e.get("logger") == "app.request" and e["status"] == 200}
    assert len(draining) == 2 and answered <= draining


def test_pod_second_stop_signal_stops_every_worker_at_once(redis_url, images, tmp_path):
    log_path = tmp_path / "server.log"
    with pod(log_path, redis_url, SHUTDOWN_GRACE_S="300") as (proc, base), ThreadPoolExecutor(1) as pool:
        held = pool.submit(call, base, IMAGE_PATH, {"image_url": images.url("gated/a.jpg")}, timeout=120)
        until(lambda: images.count("/gated/") == 1, "the request reaching the image server")
        proc.send_signal(signal.SIGTERM)
        health_until(base, lambda s, b: s == 503 and b["status"] == "draining", timeout_s=10)
        second_at = datetime.now(UTC)
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(60)  # far sooner than the 300 s of grace the first signal gave
        images.gate.set()
        outcome = held.exception(30) or held.result(30)[0]
    assert (exit_code, outcome != 200) == (0, True)  # the held request was cut
    entries = json_log(log_path)
    draining = {e["pid"] for e in entries if e["msg"] == "signal 15: draining before shutdown"}
    stopped = {e["pid"] for e in entries if e["msg"] == "signal 3: stopping at once"}
    # The idle worker drains at once, and may be gone before the second signal; every other one stops at once.
    gone = {e["pid"] for e in entries if e["msg"].startswith("Worker exiting") and _at(e) < second_at}
    assert (len(draining), stopped | gone, stopped & gone, len(stopped) >= 1) == (2, draining, set(), True)


def test_pod_drain_answers_metrics_until_the_last_worker_stops(redis_url, images, tmp_path):
    log_path = tmp_path / "server.log"
    with pod(log_path, redis_url, SHUTDOWN_GRACE_S="60") as (proc, base):
        pids = worker_pids(base)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(call, base, IMAGE_PATH, {"image_url": images.url("gated/a.jpg")}, timeout=90)
            until(lambda: images.count("/gated/") == 1, "the request reaching the image server")
            proc.send_signal(signal.SIGTERM)
            # The idle worker drains at once and exits; the other one waits for its request.
            until(lambda: sum(map(alive, pids)) == 1, "the idle worker's exit")
            metrics = scrape(base)  # answered by the worker still draining: raises on anything but 200
            images.gate.set()
            answer = held.result(60)
        exit_code = proc.wait(60)
    assert (value(metrics, "clip_workers"), answer[0], exit_code) == (2, 200, 0)


def _post(conn: http.client.HTTPConnection, path: str, body: dict[str, str], payload_id: str, request_id: str) -> int:
    """POST a signed `body` on a kept-alive connection (so to the worker that holds it); return the status."""
    headers = signed_headers(SECRET, "POST", path, payload_id) | {
        "Content-Type": "application/json",
        "X-Request-ID": request_id,
    }
    conn.request("POST", path, json.dumps(body), headers)
    response = conn.getresponse()
    response.read()
    return response.status


def test_pod_worker_stopped_alone_takes_no_new_connection_and_finishes_its_requests(redis_url, images, tmp_path):
    log_path = tmp_path / "server.log"
    with pod(log_path, redis_url, SHUTDOWN_GRACE_S="60") as (_, base):
        address = urlsplit(base)
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=90)
        first = _post(conn, TEXT_PATH, {"text": "pin"}, text_payload_id("pin"), "pin")
        victim = answered_by(log_path, "pin")
        url = images.url("gated/a.jpg")
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(_post, conn, IMAGE_PATH, {"image_url": url}, image_payload_id(url), "held")
            until(lambda: images.count("/gated/") == 1, "the request reaching the image server")
            os.kill(victim, signal.SIGTERM)
            until(lambda: any("leaving alone" in e["msg"] for e in json_log(log_path)), "the victim's drain")
            # New connections while the victim finishes its request: the other worker takes every one.
            meanwhile = [call(base, TEXT_PATH, {"text": f"meanwhile {i}"})[0] for i in range(30)]
            images.gate.set()
            held_status = held.result(60)
        conn.close()
        health_until(base, lambda s, b: s == 200 and b["pod"]["restarts"] == 1 and victim not in worker_pids(base))
    assert (first, held_status, meanwhile) == (200, 200, [200] * 30)
