"""Run the real app under uvicorn in a background thread, on a free port of 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from app.inference.loading import load_clip
from app.main import EmbedderFactory, create_app
from app.settings import Settings
from scripts.procs import wait_healthy


class RunningService:
    def __init__(self, server: uvicorn.Server, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def base(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"


@contextmanager
def run_service(
    settings: Settings, embedder_factory: EmbedderFactory = load_clip, wait_ready: bool = True, **app_options: Any
) -> Iterator[RunningService]:
    """Start the app, wait until /health is 200 (unless told not to), stop it afterwards.

    `app_options` go to `create_app` (e.g. `lookup`, the DNS seam of the URL guard)."""
    app = create_app(settings, embedder_factory=embedder_factory, **app_options)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    running = RunningService(server, thread)
    if wait_ready:
        wait_healthy(running.base, deadline)
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=30)
