"""WORKERS > 1: a worker's intake, the connections the supervisor's dealer hands it (app.ops.dealer).

Each one is connected to the event loop with uvicorn's own protocol, so that uvicorn's connection
tracking, drain and shutdown see it as a connection it accepted. The worker tells the dealer when it
takes connections (once it serves) and when it stops; it reports every connection it takes before it
reads from it (until then the dealer may hand it to another worker), and how many have closed, so that
the dealer hands each new one to the worker that holds the fewest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import uvicorn

from app.ops.dealer import CLOSE, MAX_FDS, OPEN, report
from app.ops.lifecycle import DrainingServer, Lifecycle

log = logging.getLogger("app.ops.intake")

# How long a stopping worker waits for the dealer to end the channel (the connections already sent come
# first): it answers at once unless the supervisor is stuck.
CLOSE_WAIT_S = 1.0
# How soon a message that met a full channel is sent again.
RETRY_S = 0.001
# How long closed connections may go unreported: every message wakes the supervisor, which costs more than
# the message on a virtual machine, and a count 10 ms late barely moves the dealer's choice.
REPORT_EVERY_S = 0.01


class Intake:
    """Take the connections that arrive on `channel` from the dealer."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._protocol: Callable[[], asyncio.Protocol] = asyncio.Protocol
        self._loop = asyncio.get_running_loop()
        self._ended = self._loop.create_future()
        self._closing = False
        self._dealer_done = False  # the dealer ended the channel: once all is reported, close it
        self._taken = 0
        self._closed = 0
        self._reported = (0, 0)
        self._timer: asyncio.TimerHandle | None = None  # the next report, when one is due
        self._unreported: list[socket.socket] = []  # taken, not yet reported: not read from

    def open(self, protocol: Callable[[], asyncio.Protocol]) -> None:
        """Start taking connections, each served by a `protocol()`, and tell the dealer so."""
        self._protocol = protocol
        self._loop.add_reader(self._channel.fileno(), self._receive)
        self._send(OPEN)

    def close(self) -> None:
        """Take no new connection: the dealer sends no more, then ends the channel."""
        if self._closing or self._ended.done():
            return
        self._closing = True
        self._say_close()

    def _say_close(self) -> None:
        if not self._ended.done() and not self._send(CLOSE):
            self._loop.call_later(RETRY_S, self._say_close)

    async def wait_closed(self) -> None:
        """Return once the dealer has ended the channel and every connection it sent is taken."""
        try:
            await asyncio.wait_for(asyncio.shield(self._ended), CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("the supervisor did not end this worker's channel within %gs", CLOSE_WAIT_S)

    def protocol_closed(self) -> None:
        """Count one of this worker's connections closed; report the total within REPORT_EVERY_S."""
        self._closed += 1
        if self._timer is None:
            self._timer = self._loop.call_later(REPORT_EVERY_S, self._report)

    def _report(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ended.done():
            return
        totals = (self._taken, self._closed)
        if totals != self._reported:
            if not self._send(report(*totals)):
                self._timer = self._loop.call_later(RETRY_S, self._report)
                return
            self._reported = totals
        for sock in self._unreported:
            self._connect(sock)
        self._unreported.clear()
        if self._dealer_done:
            self._end()

    def _send(self, message: bytes) -> bool:
        """Send `message`; return False when the channel is full (the caller tries again)."""
        try:
            self._channel.send(message)
        except BlockingIOError:
            return False
        except OSError:
            pass  # the supervisor has gone: it hands nothing again, and the channel's end follows
        return True

    def _receive(self) -> None:
        while not self._dealer_done:
            try:
                message, fds, flags, _ = socket.recv_fds(self._channel, 16, MAX_FDS)
            except BlockingIOError:
                break
            except OSError:
                message, fds, flags = b"", [], 0
            self._unreported.extend(socket.socket(fileno=fd) for fd in fds)
            self._taken += len(fds)
            if flags & socket.MSG_CTRUNC:
                log.error("connections lost in the hand-off: more than %d in one message", MAX_FDS)
            self._dealer_done = not message
        if self._dealer_done:
            self._loop.remove_reader(self._channel.fileno())
        self._report()  # at once: connects what came (then ends the channel if the dealer has)

    def _end(self) -> None:
        log.info("the supervisor hands this worker no more connections")
        self._channel.close()
        self._ended.set_result(None)

    def _connect(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        task = self._loop.create_task(self._loop.connect_accepted_socket(self._protocol, sock))
        task.add_done_callback(lambda done: self._connected(done, sock))

    def _connected(self, task: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]], sock: socket.socket) -> None:
        if task.cancelled() or task.exception() is not None:
            log.warning("a connection handed to this worker could not be served: %r", task.exception())
            sock.close()
            self.protocol_closed()  # the dealer counts it until told


def counting(base: type[asyncio.Protocol], closed: Callable[[], None]) -> type[asyncio.Protocol]:
    """Return `base` (uvicorn's HTTP protocol) with `closed()` called after each of its connections ends."""

    def connection_lost(self: asyncio.Protocol, exc: Exception | None) -> None:
        base.connection_lost(self, exc)
        closed()

    return type(f"Counted{base.__name__}", (base,), {"connection_lost": connection_lost})


class HandedServer(DrainingServer):
    """A DrainingServer without a listening socket: its connections come from the dealer (app.ops.dealer)."""

    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        grace_s: float,
        channel: socket.socket,
        *,
        ignored: frozenset[int] = frozenset(),
        at_once: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__(config, lifecycle, grace_s, ignored=ignored, at_once=at_once)
        self._channel = channel
        self.intake: Intake | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        if not self.started or self.should_exit:  # a stop signal came while the app started
            return
        intake = Intake(self._channel)
        config, state, app_state = self.config, self.server_state, self.lifespan.state
        protocol = counting(config.http_protocol_class, intake.protocol_closed)
        # As uvicorn's own startup makes each connection's protocol.
        intake.open(lambda: protocol(config=config, server_state=state, app_state=app_state))  # type: ignore[call-arg]
        self.intake = intake

    def stop_accepting(self) -> None:
        super().stop_accepting()
        if self.intake is not None:
            self.intake.close()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The connections already on their way are taken first, so that uvicorn's shutdown sees them all.
        self.stop_accepting()
        if self.intake is not None:
            await self.intake.wait_closed()
        await super().shutdown(sockets)
