"""Graceful shutdown: on SIGTERM, SIGINT (Ctrl+C) or SIGQUIT drain, then stop, and exit 0.

Order: /health turns 503 "draining" at once and new /v1 requests get 503 (the listener stays open,
so load balancers see the 503), the requests in flight finish (up to SHUTDOWN_GRACE_S), then uvicorn
closes the listener and runs the app's shutdown. A second signal stops at once: requests still running
get STOP_TIMEOUT_S, then the app shuts down. uvicorn's own handler would close the listener first and
re-raise the signal after shutdown (exit 143); this server takes the signals itself instead.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from app.services import Services

log = logging.getLogger("app.ops.lifecycle")

# After the drain, requests still running past the grace period get this long before being cancelled.
STOP_TIMEOUT_S = 2


class Lifecycle:
    """The link between the process (signals) and the running app's services.

    `hold_while_loading`, asked once as the app starts: when it says yes, the app accepts connections
    only once its model is loaded (or a stop signal came), instead of at once. `leaving_alone`, asked on
    the first stop signal: when it says yes, the pod's other processes go on serving,
    so this one stops taking connections at once and finishes its requests instead of draining with its
    listener open (503s). Both come from a pod's worker (app.ops.workers).
    """

    def __init__(
        self,
        hold_while_loading: Callable[[], bool] | None = None,
        leaving_alone: Callable[[], bool] | None = None,
    ) -> None:
        self.services: Services | None = None
        self._hold_while_loading = hold_while_loading
        self._leaving_alone = leaving_alone
        self._stop = asyncio.Event()

    def leaving_alone(self) -> bool:
        """Say whether this process stops while the pod's others go on serving."""
        return self._leaving_alone is not None and self._leaving_alone()

    def request_stop(self) -> None:
        """A stop signal came: end a hold at once (call it on the event loop)."""
        self._stop.set()

    async def before_serving(self, loader: asyncio.Task[None]) -> None:
        """Return when the app may accept connections: at once, or, when held, once `loader` is done."""
        if self._hold_while_loading is None or not self._hold_while_loading():
            return
        log.info("another worker serves: this one accepts connections once its model is loaded")
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([loader, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    async def drain(self, grace_s: float, *, refuse: bool = True) -> bool:
        """Refuse new work (unless told not to), then wait for the /v1 requests in flight; return False if
        the grace ran out."""
        services = self.services
        if services is None:
            return True
        if refuse:
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
    """uvicorn.Server whose first SIGTERM, SIGINT or SIGQUIT drains the app before the usual shutdown.

    A pod's worker (app.ops.workers) passes `ignored`, signals it leaves to its supervisor, and `at_once`,
    signals that stop it without draining.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        grace_s: float,
        *,
        ignored: frozenset[int] = frozenset(),
        at_once: frozenset[int] = frozenset(),
    ) -> None:
        config.timeout_graceful_shutdown = STOP_TIMEOUT_S
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grace_s = grace_s
        self._ignored = ignored
        self._at_once = at_once
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # uvicorn takes SIGINT and SIGTERM (and restores their handlers after); SIGQUIT is taken here.
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGQUIT, self.handle_exit)
        try:
            await super().serve(sockets)
        finally:
            if previous is not None:
                signal.signal(signal.SIGQUIT, previous)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags and wakes the loop. Not recorded in _captured_signals: the
        # signal is handled, not re-raised after shutdown.
        if sig in self._ignored:
            return
        if sig in self._at_once or self._signalled or self._loop is None or not self.started:
            self.stop_now(sig)
            return
        self._signalled = True
        self._loop.call_soon_threadsafe(self._begin_drain, sig)

    def stop_now(self, sig: int | None = None) -> None:
        """Stop without draining: what a second signal does (a third skips waiting for connections)."""
        self.force_exit = self.should_exit
        self.should_exit = True
        if self._loop is not None:  # safe from a signal handler: it only wakes the loop
            self._loop.call_soon_threadsafe(self._stopping_now, sig)

    def stop_accepting(self) -> None:
        """Take no new connection; those open go on."""
        for server in self.servers:
            server.close()

    def _stopping_now(self, sig: int | None) -> None:
        if sig is not None:
            log.info("signal %d: stopping at once", sig)
        self._lifecycle.request_stop()

    def _begin_drain(self, sig: int) -> None:
        alone = self._lifecycle.leaving_alone()
        if alone:
            log.info("signal %d: leaving alone; no new connections, the other workers take them", sig)
            self.stop_accepting()
        else:
            log.info("signal %d: draining before shutdown", sig)
        self._drain = asyncio.create_task(self._drain_then_stop(refuse=not alone), name="drain")

    async def _drain_then_stop(self, refuse: bool) -> None:
        try:
            await self._lifecycle.drain(self._grace_s, refuse=refuse)
        finally:
            self.should_exit = True
