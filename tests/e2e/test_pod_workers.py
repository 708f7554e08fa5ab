"""WORKERS=2 as an operator runs it: `python -m app` with two worker processes and a real Redis."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from clip_client.signing import new_nonce, signed_headers, text_payload_id

from tests.support.api import SECRET, call
from tests.support.logs import json_log
from tests.support.metrics import scrape, value
from tests.support.pod import Senders, answered_by, health_until, pod, redis_or_skip, until, worker_pids
from tests.support.redis import RedisServer

TEXT_PATH = "/v1/embed/text"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RedisServer(redis_or_skip(), tmp_path_factory.mktemp("redis")) as server:
        yield server.url


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
    # Only the top level says `status`: a grep for "status":"ok" reads the pod's answer, never a worker's.
    assert [(w["index"], w["ready"], w["phase"], w["device"]) for w in pod_view["workers"]] == [
        (0, True, "serving", "cpu"),
        (1, True, "serving", "cpu"),
    ]
    assert all("status" not in w for w in pod_view["workers"])
    assert len({w["pid"] for w in pod_view["workers"]}) == 2


def test_pod_spreads_requests_over_both_workers_and_metrics_count_them_all(running_pod):
    base, log_path = running_pod
    sample = {"endpoint": TEXT_PATH, "status": "200"}
    before = value(scrape(base), "clip_http_requests_total", **sample)
    pids = set()
    for i in range(24):
        status, _, _ = call(base, TEXT_PATH, {"text": f"caption {i}"}, headers={"X-Request-ID": f"spread-{i}"})
        assert status == 200
        pids.add(answered_by(log_path, f"spread-{i}"))
    after = value(scrape(base), "clip_http_requests_total", **sample)
    assert len(pids) == 2  # new connections each time: the kernel hands them to both workers
    assert after - before == 24  # whichever worker answers the scrape, it counts the whole pod
    # One line per request, the service's own: no uvicorn access line beside it, as in one process.
    assert not [e for e in json_log(log_path) if e.get("logger") == "uvicorn.access"]


def test_pod_nonce_replayed_to_another_worker_is_refused(running_pod):
    base, log_path = running_pod
    body = {"text": "replay me"}
    headers = signed_headers(SECRET, "POST", TEXT_PATH, text_payload_id(body["text"]), nonce="pod-replay-nonce-0001")
    first = call(base, TEXT_PATH, body, secret=None, headers=headers | {"X-Request-ID": "replay-0"})
    assert first[0] == 200
    first_pid = answered_by(log_path, "replay-0")
    replay_pids = set()
    for i in range(1, 16):
        status, answer, _ = call(base, TEXT_PATH, body, secret=None, headers=headers | {"X-Request-ID": f"replay-{i}"})
        assert (status, answer["error"]["code"]) == (401, "nonce_reused")
        replay_pids.add(answered_by(log_path, f"replay-{i}"))
    assert replay_pids - {first_pid}, "no replay reached the other worker"


# SIGTERM: the worker drains and exits 0 through gunicorn's stack, where the pod's own clean-up must not run.
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_pod_worker_that_exits_is_replaced_and_the_pod_serves_again(redis_url, tmp_path, sig):
    log_path = tmp_path / "server.log"
    with pod(log_path, redis_url) as (proc, base):
        victim = worker_pids(base)[0]
        os.kill(victim, sig)
        body = health_until(
            base, lambda s, b: s == 200 and b["pod"]["restarts"] == 1 and victim not in worker_pids(base)
        )
        answers = [call(base, TEXT_PATH, {"text": f"after {i}"})[0] for i in range(10)]
        metrics = scrape(base)  # raises on anything but 200
        supervising = proc.poll() is None
    assert (body["pod"]["ready"], answers, supervising, proc.returncode) == (2, [200] * 10, True, 0)
    assert (value(metrics, "clip_worker_restarts_total"), value(metrics, "clip_workers_ready")) == (1, 2)
    assert value(metrics, "clip_http_requests_total", endpoint=TEXT_PATH, status="200") == 10
    died = [e for e in json_log(log_path) if e.get("logger") == "app.ops.supervisor" and "died" in e["msg"]]
    assert [(e["pid"], e["restarts"]) for e in died] == [(victim, 1)]


def test_pod_shared_state_failures_total_never_drops_when_a_worker_dies(tmp_path):
    log_path = tmp_path / "server.log"
    with RedisServer(redis_or_skip(), tmp_path) as store, pod(log_path, store.url) as (_, base):
        store.kill()
        # A request with a nonce, which only the store can check: one failed call, one 503.
        answers = [_with_nonce(base, f"x {i}", f"down-{i}") for i in range(12)]
        failed_on = {answered_by(log_path, f"down-{i}") for i in range(12)}
        before = value(scrape(base), "clip_shared_state_failures_total")
        victim = min(failed_on)
        os.kill(victim, signal.SIGKILL)
        until(
            lambda: victim not in worker_pids(base) and value(scrape(base), "clip_workers_ready") == 2,
            "the replacement's start",
        )
        after = value(scrape(base), "clip_shared_state_failures_total")
    assert {status for status, _, _ in answers} == {503}
    # Prometheus reads a counter that drops as a reset: the dead worker's failures must stay in the total.
    assert (before, after) == (12, 12)


def _with_nonce(base: str, text: str, request_id: str) -> tuple[int, dict, dict[str, str]]:
    headers = signed_headers(SECRET, "POST", TEXT_PATH, text_payload_id(text), nonce=new_nonce())
    return call(base, TEXT_PATH, {"text": text}, secret=None, headers=headers | {"X-Request-ID": request_id})


class _Stream(Senders):
    """Threads sending text requests to `base`, each on a new connection; every outcome kept, with its time."""

    def __init__(self, base: str, threads: int) -> None:
        super().__init__(threads, join_s=40)
        self.base = base
        self.outcomes: list[tuple[float, int | str]] = []  # (when answered, status or the error's name)
        self._texts = itertools.count()

    def send(self, index: int) -> None:
        try:
            outcome: int | str = call(self.base, TEXT_PATH, {"text": f"stream {next(self._texts)}"}, timeout=30)[0]
        except OSError as exc:  # no HTTP answer: the worker holding the connection was killed
            outcome = type(exc).__name__
        self.outcomes.append((time.monotonic(), outcome))


def test_pod_replacement_worker_accepts_connections_only_once_its_model_is_loaded(redis_url, tmp_path):
    log_path = tmp_path / "server.log"
    threads = 2
    # A model that takes 3 s more to load: long enough for many requests to meet the replacement loading.
    with pod(log_path, redis_url, module="tests.support.slow_pod", LOAD_DELAY_S="3") as (_, base):
        victim = worker_pids(base)[0]
        with _Stream(base, threads) as stream:
            until(lambda: len(stream.outcomes) >= 20, "20 answers before the kill")
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            health_until(base, lambda s, b: s == 200 and b["pod"]["restarts"] == 1, timeout_s=120)
            replaced = time.monotonic()
    held = [e for e in json_log(log_path) if e["msg"].startswith("another worker serves")]
    outcomes = Counter(outcome for _, outcome in stream.outcomes)
    during = Counter(outcome for when, outcome in stream.outcomes if killed < when < replaced)
    # No request met a worker answering 503: only those in flight on the killed worker lost their answer...
    assert {k for k in outcomes if k != 200} <= {"RemoteDisconnected", "ConnectionResetError"}
    assert outcomes.total() - outcomes[200] <= threads
    # ...while the stream kept running, and the replacement held back as it loaded (and said so).
    assert during[200] > 20 and len(held) == 1 and held[0]["pid"] != victim
