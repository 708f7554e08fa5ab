"""Graceful shutdown as an operator sees it: SIGTERM to a real `python -m app` with requests in flight."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from scripts.procs import app_server
from tests.support.api import call
from tests.support.data import TINY_APP_ENV, jpeg_bytes
from tests.support.imageserver import ImageServer


@contextmanager
def app_process(log_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with app_server(TINY_APP_ENV | env, log=log_path, timeout_s=90) as running:
        yield running


def _wait_for_status(base: str, status: int, timeout_s: float = 10) -> tuple[int, dict, dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = call(base, "/health", timeout=5)
        if answer[0] == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.02)


def _wait_for_count(images: ImageServer, prefix: str, n: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while images.count(prefix) < n:
        assert time.monotonic() < deadline, f"only {images.count(prefix)} of {n} requests reached the image server"
        time.sleep(0.01)


# Docker and Kubernetes send SIGTERM, a terminal's Ctrl+C SIGINT, Ctrl+\ SIGQUIT: each one drains.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["term", "int", "quit"])
def test_stop_signal_drains_in_flight_requests_refuses_new_ones_and_exits_0(tmp_path, sig):
    log_path = tmp_path / "server.log"
    with ImageServer() as images, app_process(log_path, SHUTDOWN_GRACE_S="30") as (proc, base):
        images.files["a.jpg"] = jpeg_bytes(96, 64, 3)
        with ThreadPoolExecutor(3) as pool:
            in_flight = [
                pool.submit(call, base, "/v1/embed/image", {"image_url": images.url("gated/a.jpg")}, timeout=60)
                for _ in range(3)
            ]
            _wait_for_count(images, "/gated/", 3)
            proc.send_signal(sig)
            health = _wait_for_status(base, 503)
            live = call(base, "/live")
            refused = call(base, "/v1/embed/text", {"text": "too late"})
            still_running = proc.poll() is None
            images.gate.set()
            answers = [f.result(60) for f in in_flight]
        exit_code = proc.wait(30)
    assert (health[0], health[1]["status"], health[2]["retry-after"]) == (503, "draining", "1")
    assert live[0] == 200  # the listener stays open while draining
    assert (refused[0], refused[1]["error"]["code"], refused[2]["retry-after"]) == (503, "unavailable", "1")
    assert still_running
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert all(len(body["embedding"]) == 64 for _, body, _ in answers)
    assert exit_code == 0
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    messages = [e["msg"] for e in entries]
    assert f"signal {int(sig)}: draining before shutdown" in messages
    assert "draining: 3 request(s) in flight, waiting up to 30s" in messages
    statuses = [(e["endpoint"], e["status"]) for e in entries if e["logger"] == "app.request"]
    assert statuses.count(("/v1/embed/image", 200)) == 3 and ("/v1/embed/text", 503) in statuses


def test_sigterm_stops_after_grace_when_a_request_hangs(tmp_path):
    with ImageServer() as images, app_process(tmp_path / "server.log", SHUTDOWN_GRACE_S="0.5") as (proc, base):
        images.files["a.jpg"] = jpeg_bytes(96, 64, 3)
        with ThreadPoolExecutor(1) as pool:
            hung = pool.submit(call, base, "/v1/embed/image", {"image_url": images.url("gated/a.jpg")}, timeout=60)
            _wait_for_count(images, "/gated/", 1)
            proc.send_signal(signal.SIGTERM)
            exit_code = proc.wait(30)
            images.gate.set()
            outcome = hung.exception(30) or hung.result(30)[0]
    assert exit_code == 0
    assert outcome != 200  # cut off after the grace period: the connection closed without an answer
    assert "grace period over with 1 request(s) still in flight" in (tmp_path / "server.log").read_text()


def test_second_sigterm_stops_at_once_cutting_requests_in_flight(tmp_path):
    log_path = tmp_path / "server.log"
    with ImageServer() as images, app_process(log_path, SHUTDOWN_GRACE_S="300") as (proc, base):
        images.files["a.jpg"] = jpeg_bytes(96, 64, 3)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(call, base, "/v1/embed/image", {"image_url": images.url("gated/a.jpg")}, timeout=120)
            _wait_for_count(images, "/gated/", 1)
            proc.send_signal(signal.SIGTERM)
            draining = _wait_for_status(base, 503)
            proc.send_signal(signal.SIGTERM)
            exit_code = proc.wait(60)  # far sooner than the 300 s of grace the first signal gave
            images.gate.set()
            outcome = held.exception(30) or held.result(30)[0]
    assert (draining[1]["status"], exit_code, outcome != 200) == ("draining", 0, True)
    assert "signal 15: stopping at once" in log_path.read_text()


def test_sigterm_when_idle_exits_0(tmp_path):
    with app_process(tmp_path / "server.log") as (proc, _):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
