"""Connections to `python -m app`: spread over a pod's workers, and TCP_NODELAY on every one, in each mode.

The server's side of each connection is read from outside (tests/support/sockets.py): which process holds
it, and the socket's options as the server set them.
"""

from __future__ import annotations

import http.client
import itertools
import math
import os
import signal
import struct
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest

from scripts.procs import app_server
from tests.support.api import call, upload
from tests.support.data import TINY_APP_ENV, jpeg_bytes
from tests.support.imageserver import ImageServer
from tests.support.logs import json_log
from tests.support.pod import POD_ENV, Senders, health_until, pod, redis_or_skip, until, worker_pids
from tests.support.redis import RedisServer
from tests.support.sockets import held, tcp_nodelay

BURST = 32
BURSTS = 8
# Each worker's share of a burst, at least (the 30%).
MIN_SHARE = math.ceil(0.3 * BURST)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RedisServer(redis_or_skip(), tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def _with_comment(jpeg: bytes, number: int) -> bytes:
    """Return `jpeg` with a comment segment holding `number`: the same picture, new bytes (no cache hit)."""
    comment = b"%d" % number
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


class _Uploads(Senders):
    """Threads uploading 1 MP JPEGs, each new bytes, until the `with` block ends."""

    def __init__(self, base: str, threads: int) -> None:
        super().__init__(threads, join_s=60)
        self.base = base
        self.photo = jpeg_bytes(1000, 1000, seed=7)
        self.numbers = itertools.count()
        self.statuses: Counter[int] = Counter()

    def send(self, index: int) -> None:
        status, _, _ = upload(self.base, [("image", "photo.jpg", _with_comment(self.photo, next(self.numbers)))])
        self.statuses[status] += 1


def _opened(base: str, count: int, stack: ExitStack) -> list[http.client.HTTPConnection]:
    """Open `count` connections in one burst, then send a request on each: every one is then served."""
    address = urlsplit(base)
    conns = [http.client.HTTPConnection(address.hostname, address.port, timeout=60) for _ in range(count)]
    for conn in conns:
        stack.callback(conn.close)
    for conn in conns:
        conn.connect()
    for conn in conns:
        conn.request("GET", "/live")
    for conn in conns:
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    return conns


def _holders(base: str, conns: list[http.client.HTTPConnection], pids: list[int]) -> Counter[int]:
    """Count the connections of `conns` that each of `pids` holds."""
    holders = held(urlsplit(base).port or 0, pids)
    return Counter(holders[conn.sock.getsockname()[1]][0] for conn in conns)


def test_pod_connections_burst_under_1mp_load_gives_each_worker_a_fair_share(redis_url, tmp_path):
    with pod(tmp_path / "server.log", redis_url) as (_, base), ExitStack() as stack:
        pids = worker_pids(base)
        with _Uploads(base, threads=4) as load:
            # Keep-alive clients open their connections in one burst, here while both workers decode.
            shares = [_holders(base, _opened(base, BURST, stack), pids) for _ in range(BURSTS)]
        uploaded = load.statuses
    unfair = [dict(share) for share in shares if min(share[pid] for pid in pids) < MIN_SHARE]
    assert (unfair, set(uploaded)) == ([], {200})


def test_pod_connections_replacement_worker_gets_its_share_of_a_burst(redis_url, tmp_path):
    with pod(tmp_path / "server.log", redis_url) as (_, base), ExitStack() as stack:
        victim = worker_pids(base)[0]
        os.kill(victim, signal.SIGKILL)
        health_until(base, lambda s, b: s == 200 and b["pod"]["restarts"] == 1 and victim not in worker_pids(base))
        pids = worker_pids(base)
        share = _holders(base, _opened(base, BURST, stack), pids)
    assert min(share[pid] for pid in pids) >= MIN_SHARE


def test_pod_connections_worker_stopping_alone_is_handed_no_new_connection(redis_url, tmp_path):
    log_path = tmp_path / "server.log"
    with ImageServer() as images, pod(log_path, redis_url, SHUTDOWN_GRACE_S="60") as (_, base), ExitStack() as stack:
        images.files["a.jpg"] = jpeg_bytes(96, 64, 3)
        pids = worker_pids(base)
        with ThreadPoolExecutor(1) as pool:
            # A request held in flight (its image waits on the gate) keeps its worker stopping, not gone.
            held_request = pool.submit(call, base, "/v1/embed/image", {"image_url": images.url("gated/a.jpg")})
            until(lambda: images.count("/gated/") == 1, "the request reaching the image server")
            (victim,) = {pid for pid, _ in held(urlsplit(base).port or 0, pids).values()}
            os.kill(victim, signal.SIGTERM)
            until(
                lambda: any(
                    e["msg"].endswith("no more connections") and e["pid"] == victim for e in json_log(log_path)
                ),
                "the victim's channel closed",
            )
            share = _holders(base, _opened(base, 8, stack), pids)
            images.gate.set()
            status = held_request.result(60)[0]
    (other,) = set(pids) - {victim}
    assert (share, status) == (Counter({other: 8}), 200)


@pytest.mark.parametrize("workers", [1, 2])
def test_pod_connections_every_accepted_socket_has_tcp_nodelay(redis_url, tmp_path, workers):
    env = (POD_ENV | {"STATE_URL": redis_url} if workers > 1 else TINY_APP_ENV) | {"WORKERS": str(workers)}
    with app_server(env, log=tmp_path / "server.log", timeout_s=120) as (proc, base), ExitStack() as stack:
        conns = _opened(base, 6, stack)
        pids = worker_pids(base) if workers > 1 else [proc.pid]
        holders = held(urlsplit(base).port or 0, pids)
        flags = [tcp_nodelay(*holders[conn.sock.getsockname()[1]]) for conn in conns]
    assert flags == [1] * 6
