"""Small local HTTP stubs for the client's failure modes, and a recorder of what a client sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

# Its home is scripts.procs; kept importable here while tests/e2e/test_dev_mode.py imports it from here.
from scripts.procs import free_port

__all__ = ["Handler", "Sent", "Sleeps", "free_port", "silent_server", "stub_server"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def stub_server(routes: dict[tuple[str, str], Handler]) -> AsyncIterator[str]:
    """Serve `{(method, path): handler}` on a free port of 127.0.0.1; yield the base URL."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Accept connections and never answer; yield the base URL and a list that counts connections."""
    connections: list[int] = []
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}", connections
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@dataclass
class Sent:
    """Every HTTP request a client started, as (method, path) pairs, via aiohttp tracing."""

    requests: list[tuple[str, str]] = field(default_factory=list)

    def trace_config(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def on_start(_: object, __: object, params: aiohttp.TraceRequestStartParams) -> None:
            self.requests.append((params.method, params.url.path))

        config.on_request_start.append(on_start)
        return config


@dataclass
class Sleeps:
    """An injectable sleep that records the delays and does not wait."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
