"""One HTTP worker's connection to one engine process: connect, say hello with the arena, reconnect when it drops.

The link buffers what the worker sends during one turn of its event loop (items, cancellations, the
count of items being prepared) and writes it as one batch of frames at the end of the turn. A link that
loses its engine tells its owner, which fails that engine's items with a retryable 503, and connects
again every RECONNECT_S until a replacement engine answers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from app.engine import wire

log = logging.getLogger("app.engine.link")

RECONNECT_S = 0.2  # between attempts to reach an engine that is not listening (yet)
READY_TIMEOUT_S = 10.0


class LinkOwner:
    """What a link reports to (app.engine.client.RemoteEngine)."""

    def link_ready(self, link: EngineLink) -> None:
        """The engine answered the hello: items may go to it."""

    def link_down(self, link: EngineLink) -> None:
        """The engine is gone: none of its items will be answered."""

    def results(self, link: EngineLink, results: wire.Results) -> None:
        """The engine answered items."""


class EngineLink(asyncio.Protocol):
    """The connection to engine `index`, listening on `path`."""

    def __init__(self, index: int, path: str, hello: wire.Hello, fd: int, owner: LinkOwner) -> None:
        self.index = index
        self.path = path
        self.ready: wire.Ready | None = None  # set while connected and answered
        self.outstanding = 0  # items sent and not yet answered
        self.problem = "not connected yet"
        self._hello = hello
        self._fd = fd
        self._owner = owner
        self._reader = wire.FrameReader()
        self._transport: asyncio.Transport | None = None
        self._answered: asyncio.Future[wire.Ready] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._outbox: dict[str, list[wire.Item]] = {}
        self._cancels: list[int] = []
        self._expect: tuple[int, int] | None = None
        self._expect_sent = (0, 0)
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self._refused_logged = ""
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_connected(), name=f"engine-link-{self.index}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()

    # --- sending (on the worker's event loop)
    def send_item(self, model: str, item: wire.Item) -> None:
        self._outbox.setdefault(model, []).append(item)
        self.outstanding += 1
        self._schedule()

    def send_cancel(self, ident: int) -> None:
        self._cancels.append(ident)
        self._schedule()

    def send_expect(self, images: int, texts: int) -> None:
        self._expect = (images, texts)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        frames = [wire.encode(wire.Submit(model, items)) for model, items in self._outbox.items()]
        if self._cancels:
            frames.append(wire.encode(wire.Cancel(self._cancels)))
        if self._expect is not None and self._expect != self._expect_sent:
            frames.append(wire.encode(wire.Expect(*self._expect)))
            self._expect_sent = self._expect
        self._outbox, self._cancels, self._expect = {}, [], None
        if frames and self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(frames)

    # --- connecting
    async def _keep_connected(self) -> None:
        while True:
            try:
                await self._connect()
                assert self._lost is not None
                await self._lost
            except (OSError, TimeoutError, wire.ProtocolError) as exc:
                self.problem = f"engine process {self.index} unreachable ({type(exc).__name__}: {exc})"
            await asyncio.sleep(RECONNECT_S)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, self.path)
            # A few hundred bytes into an empty socket buffer: sent whole, at once.
            socket.send_fds(sock, [wire.encode(self._hello)], [self._fd])
        except OSError:
            sock.close()
            raise
        self._answered, self._lost = loop.create_future(), loop.create_future()
        await loop.create_unix_connection(lambda: self, sock=sock)
        async with asyncio.timeout(READY_TIMEOUT_S):
            ready = await self._answered
        self.ready, self.problem, self._refused_logged = ready, "", ""
        self._expect_sent = (0, 0)  # a new engine knows nothing of what this worker prepares
        log.info("connected to engine process %d (pid %d)", self.index, ready.pid, extra={"engine": self.index})
        self._owner.link_ready(self)

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            for message in self._reader.feed(data):
                self._handle(message)
        except wire.ProtocolError as exc:
            log.error("engine process %d sent what it could not have sent (%s)", self.index, exc)
            if self._transport is not None:
                self._transport.close()

    def _handle(self, message: wire.Message) -> None:
        match message:
            case wire.Results():
                self._owner.results(self, message)
            case wire.Ready() if self._answered is not None and not self._answered.done():
                self._answered.set_result(message)
            case wire.Refused(reason):
                if reason != self._refused_logged:
                    log.error("engine process %d refused this worker: %s", self.index, reason)
                    self._refused_logged = reason
                self.problem = f"engine process {self.index} refused this worker: {reason}"
                if self._answered is not None and not self._answered.done():
                    self._answered.set_exception(wire.ProtocolError(reason))
            case _:
                raise wire.ProtocolError(f"unexpected {type(message).__name__}")

    def connection_lost(self, exc: Exception | None) -> None:
        was_ready = self.ready is not None
        self._transport, self.ready, self._reader = None, None, wire.FrameReader()
        self._outbox, self._cancels, self._expect = {}, [], None
        if was_ready:
            self.problem = f"engine process {self.index} stopped; waiting for its replacement"
            if not self._stopping:
                log.warning("lost engine process %d: %s", self.index, exc or "its connection closed")
            self._owner.link_down(self)
        if self._answered is not None and not self._answered.done():
            self._answered.set_exception(ConnectionError("closed before the engine answered the hello"))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)


def least_loaded(links: list[EngineLink], home: EngineLink, spill: Callable[[EngineLink], int]) -> EngineLink | None:
    """Return the link to send a request to: its home engine unless that one is down or has `spill` items
    waiting, else the ready link with the fewest items outstanding; None when no engine is ready."""
    if home.ready is not None and home.outstanding < spill(home):
        return home
    ready = [link for link in links if link.ready is not None]
    return min(ready, key=lambda link: link.outstanding) if ready else None
