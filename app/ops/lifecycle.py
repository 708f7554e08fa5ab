"""Graceful shutdown: on SIGTERM (or Ctrl+C) drain, then stop, and exit 0.

Order: /health turns 503 "draining" at once and new /v1 requests get 503 (the listener stays open,
so load balancers see the 503), the requests in flight finish (up to SHUTDOWN_GRACE_S), then uvicorn
closes the listener and runs the app's shutdown. A second signal stops at once. uvicorn's own
handler would close the listener first and re-raise the signal after shutdown (exit 143); this
server takes the signal itself instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn

from app.services import Services

log = logging.getLogger("app.ops.lifecycle")

# After the drain, requests still running past the grace period get this long before being cancelled.
STOP_TIMEOUT_S = 2


class Lifecycle:
    """The link between the process (signals) and the running app's services."""

    def __init__(self) -> None:
        self.services: Services | None = None

    async def drain(self, grace_s: float) -> bool:
        """Refuse new work, then wait for the /v1 requests in flight; return False if the grace ran out."""
        services = self.services
        if services is None:
            return True
        services.start_draining()
        in_flight = services.requests.count
        log.info(
            "draining: %d request(s) in flight, waiting up to %gs", in_flight, grace_s, extra={"in_flight": in_flight}
        )
        finished = await services.requests.wait_idle(grace_s)
        if not finished:
            log.warning("grace period over with %d request(s) still in flight", services.requests.count)
        return finished


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains the app before the usual shutdown."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_s: float) -> None:
        config.timeout_graceful_shutdown = STOP_TIMEOUT_S
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: the signal is handled, not re-raised after shutdown.
        if self._signalled or self._loop is None or not self.started:
            self.force_exit = self.should_exit  # a third signal skips waiting for connections
            self.should_exit = True
            return
        self._signalled = True
        self._loop.call_soon_threadsafe(self._begin_drain, sig)

    def _begin_drain(self, sig: int) -> None:
        log.info("signal %d: draining before shutdown", sig)
        self._drain = asyncio.create_task(self._drain_then_stop(), name="drain")

    async def _drain_then_stop(self) -> None:
        try:
            await self._lifecycle.drain(self._grace_s)
        finally:
            self.should_exit = True
