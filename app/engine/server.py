"""The engine process's side of the Unix socket: one connection per HTTP worker, its arena, its items in the engine.

A worker's items go into the engine's own queues (app.inference.engine) with the worker's deadline and a
caller that names the worker's request, so that the batching rules see every worker's requests as
they see one process's. Each item is answered once its queue no longer holds its payload (its batch is
done, or it was dropped unrun): only then may the worker reuse the region. The answers of one turn of
the event loop go out as one frame.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import mmap
import os
import socket

import numpy as np

from app.engine import payloads, wire
from app.errors import Unavailable
from app.inference.engine import Engine, Ticket

log = logging.getLogger("app.engine.server")

HELLO_TIMEOUT_S = 5.0
_RECV_BYTES = 1 << 16


class Connection(asyncio.Protocol):
    """One worker: its mapped arena, the items it has in the engine, the items it says are coming."""

    def __init__(self, server: EngineServer, hello: wire.Hello, arena: np.ndarray, reader: wire.FrameReader) -> None:
        self.server = server
        self.worker = hello.worker
        self._arena = arena
        self._reader = reader
        self._transport: asyncio.Transport | None = None
        self._tickets: dict[int, Ticket[payloads.Payload]] = {}
        self._answered: list[tuple[int, asyncio.Future[np.ndarray]]] = []
        self._expected = {"images": 0, "texts": 0}
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            for message in self._reader.feed(data):
                self._handle(message)
        except wire.ProtocolError as exc:
            log.error("worker %d sent what it could not have sent (%s): closing its connection", self.worker, exc)
            self._close_when_released()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._close_when_released()

    def send(self, message: wire.Message) -> None:
        """Write one frame, unless the connection is gone."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(wire.encode(message))

    # --- messages
    def _handle(self, message: wire.Message) -> None:
        match message:
            case wire.Submit(model, items):
                self._submit(model, items)
            case wire.Cancel(ids):
                for ident in ids:
                    if (ticket := self._tickets.get(ident)) is not None:
                        ticket.abandon()
            case wire.Expect(images, texts):
                self._expect({"images": images, "texts": texts})
            case _:
                raise wire.ProtocolError(f"unexpected {type(message).__name__}")

    def _submit(self, model: str, items: list[wire.Item]) -> None:
        refusal = self.server.refusal(model)
        for item in items:
            if item.id in self._tickets:
                raise wire.ProtocolError(f"item {item.id} submitted twice")
            payload = payloads.read(item, self._arena)
            if refusal is not None:
                self._answer_now(item.id, refusal)
                continue
            queue = self.server.engine.images if item.queue == "images" else self.server.engine.texts
            try:
                (ticket,) = queue.enqueue([payload], item.deadline, (self.worker, item.caller))  # type: ignore[list-item]
            except Unavailable as exc:
                self._answer_now(item.id, exc)
                continue
            self._tickets[item.id] = ticket  # type: ignore[assignment]
            self._idle.clear()
            ticket.future.add_done_callback(functools.partial(self._done, item.id))

    def _answer_now(self, ident: int, exc: Exception) -> None:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        future.set_exception(exc)
        self._done(ident, future)

    def _expect(self, counts: dict[str, int]) -> None:
        for name, queue in (("images", self.server.engine.images), ("texts", self.server.engine.texts)):
            queue.adjust_incoming(counts[name] - self._expected[name])
        self._expected = counts

    # --- answers
    def _done(self, ident: int, future: asyncio.Future[np.ndarray]) -> None:
        self._answered.append((ident, future))
        if len(self._answered) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        answered, self._answered = self._answered, []
        outcomes, rows = [], []
        for ident, future in answered:
            self._tickets.pop(ident, None)
            exc = future.exception() if not future.cancelled() else Unavailable("cancelled")
            if exc is None:
                outcomes.append(wire.Outcome(ident))
                rows.append(future.result())
            else:
                outcomes.append(wire.error_outcome(ident, exc))
        vectors = np.stack(rows).astype(np.float32, copy=False).tobytes() if rows else b""
        self.send(wire.Results(self.server.dim, outcomes, vectors))
        if not self._tickets:
            self._idle.set()
            if self._closing and self._transport is not None:
                self._transport.close()

    def _close_when_released(self) -> None:
        """Give every item up and stop listening; close once the engine holds none of this worker's payloads."""
        if self._closing:
            return
        self._closing = True
        self._expect({"images": 0, "texts": 0})
        for ticket in self._tickets.values():
            ticket.abandon()
        if self._transport is not None:
            self._transport.pause_reading()
            if not self._tickets:
                self._transport.close()
        self.server.forget(self)

    async def wait_idle(self) -> None:
        """Return once every item of this worker has been answered."""
        await self._idle.wait()


class EngineServer:
    """Accept workers on a Unix socket and feed their items to `engine`."""

    def __init__(self, engine: Engine, ready: wire.Ready, dim: int) -> None:
        self.engine = engine
        self.ready = ready
        self.dim = dim
        self._model = str(ready.info["model"])
        self._connections: set[Connection] = set()
        self._stopping = False
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._ids = itertools.count()

    @property
    def workers(self) -> int:
        """Count the workers connected."""
        return len(self._connections)

    def refusal(self, model: str) -> Exception | None:
        """Return why an item for `model` is not taken now, or None."""
        if self._stopping:
            return Unavailable("the engine process is stopping; retry")
        if model != self._model:
            return Unavailable(f"this engine serves {self._model}, not {model}")
        return None

    def forget(self, connection: Connection) -> None:
        self._connections.discard(connection)

    async def listen(self, path: str) -> None:
        """Listen on the Unix socket `path` (replacing a dead engine's), readable by this user only."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(256)
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener), name="engine-accept")

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(self._start(sock), name=f"engine-hello-{next(self._ids)}")
            task.add_done_callback(_log_failure)

    async def _start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                hello, fd, reader = await _receive_hello(sock)
        except (TimeoutError, OSError, wire.ProtocolError) as exc:
            log.warning("a connection sent no valid hello (%s): closed", exc)
            sock.close()
            return
        reason = self._refuse_hello(hello, fd)
        if fd is None or reason:
            log.error("refusing worker %d: %s", hello.worker, reason)
            if fd is not None:
                os.close(fd)
            sock.setblocking(True)
            sock.sendall(wire.encode(wire.Refused(reason)))
            sock.close()
            return
        arena = mmap.mmap(fd, hello.arena_bytes)
        os.close(fd)  # the mapping keeps the memory; the worker keeps the memfd
        connection = Connection(self, hello, np.frombuffer(arena, dtype=np.uint8), reader)
        await loop.connect_accepted_socket(lambda: connection, sock)
        self._connections.add(connection)
        connection.send(self.ready)
        connection.data_received(b"")  # frames that came with the hello
        log.info("worker %d (pid %d) connected", hello.worker, hello.pid, extra={"worker": hello.worker})

    def _refuse_hello(self, hello: wire.Hello, fd: int | None) -> str:
        if hello.version != wire.VERSION:
            return f"protocol version {hello.version}, this engine speaks {wire.VERSION}: restart the pod"
        if fd is None:
            return "no shared memory came with the hello"
        if os.fstat(fd).st_size < hello.arena_bytes:
            return f"the shared memory holds {os.fstat(fd).st_size} bytes, not the {hello.arena_bytes} announced"
        return ""

    def stop_taking(self) -> None:
        """Answer every new item with Unavailable from now on (a stop signal)."""
        self._stopping = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every connected worker's items are answered; return False if `timeout_s` passed first."""
        waits = [c.wait_idle() for c in self._connections]
        if not waits:
            return True
        _, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=timeout_s)
        for task in pending:
            task.cancel()
        return not pending

    def close(self) -> None:
        """Stop accepting workers and close every connection."""
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._connections):
            connection._close_when_released()


async def _receive_hello(sock: socket.socket) -> tuple[wire.Hello, int | None, wire.FrameReader]:
    """Read the hello frame and the descriptor sent with it; return both and the reader holding any bytes after it."""
    loop = asyncio.get_running_loop()
    reader = wire.FrameReader()
    fd: int | None = None
    while True:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())
        data, fds, _, _ = socket.recv_fds(sock, _RECV_BYTES, 1)
        for extra in fds[1:] if fd is None else fds:
            os.close(extra)
        if fds and fd is None:
            fd = fds[0]
        if not data:
            raise wire.ProtocolError("closed before its hello")
        for message in reader.feed(data):
            if not isinstance(message, wire.Hello):
                raise wire.ProtocolError("the first frame is not a hello")
            return message, fd, reader


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a worker's connection failed to start", exc_info=task.exception())
