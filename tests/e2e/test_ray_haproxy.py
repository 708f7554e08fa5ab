"""When HAProxy, as Ray Serve configures and starts it, retries a request on another replica, and what it
answers when it cannot: Serve's own HAProxy config and process control (ray.serve._private.haproxy) through
deploy/ray/haproxy, in front of real servers on 127.0.0.1, without the rest of Ray.

The rule (docs/scaling-out.md#when-haproxy-retries): a request whose connection to a replica never opened is
sent to another replica, where its nonce is new; a request a replica took is never sent again, and if that
replica stops before answering the caller gets the service's retryable 503 with a fresh attempt to make.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
from clip_client.codes import ErrorCode
from clip_client.signing import new_nonce, signed_headers, text_payload_id

from app.api.errors import error_body
from app.serve.node import node_env
from scripts.procs import free_port
from tests.support.api import SECRET, call
from tests.support.data import tiny_settings
from tests.support.service import RunningService, run_service

serve_haproxy = pytest.importorskip("ray.serve._private.haproxy", reason="Ray is installed by requirements-ray.txt")
HTTPOptions = pytest.importorskip("ray.serve.config").HTTPOptions
from app.serve.haproxy import NO_ANSWER

TEXT = "/v1/embed/text"


class CountingServer:
    """A replica stand-in on 127.0.0.1: counts the requests it takes; answers 200, or dies before answering."""

    def __init__(self, *, dies: bool) -> None:
        self.dies = dies
        self.taken = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream, contextlib.suppress(OSError):  # HAProxy may reset idle ones
            while head := _read_head(stream):
                length = next((int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length:")), 0)
                stream.read(length)
                if head[0].startswith(b"GET /health"):  # HAProxy's health check
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    continue
                self.taken += 1
                if self.dies:  # took the request, then stopped without a word: a replica killed mid-request
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    def close(self) -> None:
        """Stop listening: connections are refused from now on (shutdown wakes the blocked accept first)."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _read_head(stream: BinaryIO) -> list[bytes]:
    """Return one request's head lines, or [] at the end of the connection."""
    lines = []
    while (line := stream.readline()) not in (b"", b"\r\n"):
        lines.append(line)
    return lines


@pytest.fixture
def haproxy_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hap-") as folder:  # HAProxy's socket paths: under 98 bytes
        yield Path(folder)


@asynccontextmanager
async def serve_haproxy_in_front(monkeypatch: pytest.MonkeyPatch, folder: Path, ports: list[int]) -> AsyncIterator[str]:
    """Start HAProxy as Serve does (its config, its process control, every node's wrapper) in front of `ports`."""
    monkeypatch.setattr(serve_haproxy, "RAY_SERVE_HAPROXY_BINARY_PATH", node_env()["RAY_SERVE_HAPROXY_BINARY_PATH"])
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    port = free_port()
    config = serve_haproxy.HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=port),
        socket_path=str(folder / "admin.sock"),
        server_state_base=str(folder),
        server_state_file=str(folder / "server-state"),
        metrics_enabled=False,
        stats_port=free_port(),
        metrics_port=free_port(),
    )
    api = serve_haproxy.HAProxyApi(cfg=config, config_file_path=str(folder / "haproxy.cfg"))
    servers = [serve_haproxy.ServerConfig(name=f"replica-{p}", host="127.0.0.1", port=p) for p in ports]
    backend = serve_haproxy.BackendConfig(
        name="http-clip", path_prefix="/", app_name="clip", servers=servers, http_health_check_path="/health"
    )
    api.set_backend_configs({"http-clip": backend})
    await api.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await api.stop()


def stats(folder: Path) -> dict[str, dict[str, str]]:
    """Return HAProxy's statistics by server name (and BACKEND), from its admin socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(folder / "admin.sock"))
        sock.sendall(b"show stat\n")
        out = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    header, *rows = out.lstrip("# ").splitlines()
    return {row["svname"]: row for row in (dict(zip(header.split(","), r.split(","), strict=False)) for r in rows if r)}


@pytest.fixture
def app_with_nonces(checkpoint: str) -> Iterator[RunningService]:
    with run_service(tiny_settings(clip_pretrained=checkpoint, require_nonce=True)) as running:
        yield running


async def test_ray_haproxy_retries_a_refused_connection_on_another_replica_with_its_nonce(
    monkeypatch, haproxy_dir, app_with_nonces
):
    """A replica that closed its port while HAProxy still lists it (as a draining one does): nothing was sent."""
    closing = CountingServer(dies=False)
    app_port = int(app_with_nonces.base.rsplit(":", 1)[1])
    async with serve_haproxy_in_front(monkeypatch, haproxy_dir, [closing.port, app_port]) as base:
        until_up = time.monotonic() + 30
        while stats(haproxy_dir)[f"replica-{closing.port}"]["status"] != "UP":
            assert time.monotonic() < until_up, "HAProxy never saw the replica up"
            await asyncio.sleep(0.1)
        closing.close()  # connections are refused from now on; HAProxy learns it at its next check
        answers = []
        for n in range(6):
            text = f"a caption {n}"
            headers = signed_headers(SECRET, "POST", TEXT, text_payload_id(text), nonce=new_nonce())
            answers.append(call(base, TEXT, {"text": text}, secret=None, headers=headers)[0])
        redispatched = int(stats(haproxy_dir)[f"replica-{closing.port}"]["wredis"])
    assert answers == [200] * 6  # each nonce reached the app once: no 401 for a replay
    assert closing.taken == 0
    assert redispatched >= 1  # some were sent to the closed port first, then on to the app


async def test_ray_haproxy_answers_the_services_503_for_a_request_a_replica_took_and_never_resends_it(
    monkeypatch, haproxy_dir
):
    dying, healthy = CountingServer(dies=True), CountingServer(dies=False)
    try:
        async with serve_haproxy_in_front(monkeypatch, haproxy_dir, [dying.port, healthy.port]) as base:
            answers = [call(base, TEXT, {"text": f"caption {n}"}) for n in range(8)]
    finally:
        dying.close()
        healthy.close()
    lost = [(status, body, headers) for status, body, headers in answers if status != 200]
    assert len(lost) == dying.taken >= 1
    assert dying.taken + healthy.taken == 8  # every request was sent to one server, once
    for status, body, headers in lost:
        assert status == 503
        assert body == error_body(ErrorCode.UNAVAILABLE, NO_ANSWER)
        assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"


def run_a_manager(folder: str, pid_file: str) -> None:
    """In a child process: start HAProxy as Serve's manager does, write its pid, and wait to be killed."""
    os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = node_env()["RAY_SERVE_HAPROXY_BINARY_PATH"]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    from ray.serve._private import haproxy as manager_side

    async def start_and_wait() -> None:
        config = manager_side.HAProxyConfig(
            http_options=HTTPOptions(host="127.0.0.1", port=free_port()),
            socket_path=f"{folder}/admin.sock",
            server_state_base=folder,
            server_state_file=f"{folder}/server-state",
            metrics_enabled=False,
            stats_port=free_port(),
            metrics_port=free_port(),
        )
        api = manager_side.HAProxyApi(cfg=config, config_file_path=f"{folder}/haproxy.cfg")
        await api.start()
        Path(pid_file).write_text(str(api._proc.pid))
        await asyncio.sleep(3600)

    asyncio.run(start_and_wait())


def test_ray_haproxy_stops_when_the_manager_that_started_it_is_killed(haproxy_dir):
    """A HAProxy left behind would keep the node's ports: the next manager's, or `serve run`'s, could not bind."""
    pid_file = haproxy_dir / "haproxy.pid"
    manager = multiprocessing.get_context("spawn").Process(target=run_a_manager, args=(str(haproxy_dir), str(pid_file)))
    manager.start()
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            assert manager.is_alive() and time.monotonic() < deadline, "the manager never started HAProxy"
            time.sleep(0.1)
        haproxy = int(pid_file.read_text())
        assert _running(haproxy)
    finally:
        manager.kill()  # SIGKILL: no cleanup of its own runs
        manager.join(30)
    deadline = time.monotonic() + 10
    while _running(haproxy):
        assert time.monotonic() < deadline, "HAProxy outlived the manager that started it"
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
