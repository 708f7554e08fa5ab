"""An HTTP worker's side of the engine processes: the queues its pipeline submits to (app.inference.engine.EngineLike).

An item's bytes are written once into the worker's arena, and a few numbers naming them go to an engine
(app.engine.wire). Each item goes to the worker's home engine (worker i's is
i mod the engines) unless that one is down or already has SPILL_BATCHES batches of this worker's items
waiting, then the least loaded one. The answer frees the region and resolves the item's future; a link
that drops fails its items with a retryable 503 (`unavailable`), and the arena's regions come back,
since no process can read them any more.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from app.engine import payloads, wire
from app.engine.arena import Arena
from app.engine.front import RemoteModel
from app.engine.link import EngineLink, LinkOwner, least_loaded
from app.errors import Unavailable
from app.inference.payload import ImagePayload

if TYPE_CHECKING:
    from app.inference.engine import EngineLike
    from app.inference.model import ItemPreparer
    from app.inference.registry import EngineOpener
    from app.ops.pod import PodBoard
    from app.settings import Settings

log = logging.getLogger("app.engine.client")

# A worker's items waiting in its home engine, in batches of that engine, before new requests go elsewhere.
SPILL_BATCHES = 2
Stats = Callable[[], dict[str, dict[str, int]]]


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[np.ndarray]
    queue: str
    offset: int
    size: int
    link: EngineLink


class RemoteQueue:
    """One modality's queue in the engine processes, as the pipeline sees it."""

    def __init__(self, name: str, engine: RemoteEngine) -> None:
        self._name = name
        self._engine = engine
        self.waiting = 0  # items of this worker sent to an engine and not answered

    @property
    def name(self) -> str:
        return self._name

    @property
    def depth(self) -> int:
        return self.waiting

    async def submit(
        self, payloads: Sequence[ImagePayload | torch.Tensor], deadline: float = math.inf, caller: object | None = None
    ) -> list[np.ndarray]:
        """Hand the payloads to an engine and wait for their vectors, in order."""
        return await self._engine.submit(self, payloads, deadline, caller)

    @contextmanager
    def expecting(self, count: int) -> Iterator[None]:
        """Tell the home engine that `count` items are being prepared for this queue until the block ends."""
        self._engine.expect(self._name, count)
        try:
            yield
        finally:
            self._engine.expect(self._name, -count)


class RemoteEngine(LinkOwner):
    """The engine processes listening on `paths`, fed from this worker's arena."""

    local = False

    def __init__(self, paths: Sequence[str], worker: int, arena_bytes: int, stats: Stats | None = None) -> None:
        self.arena = Arena(arena_bytes)
        hello = wire.Hello(worker=worker, pid=os.getpid(), arena_bytes=self.arena.size)
        self._links = [EngineLink(i, path, hello, self.arena.fd, self) for i, path in enumerate(paths)]
        self._home = self._links[worker % len(self._links)]
        self._stats = stats
        self.images = RemoteQueue("images", self)
        self.texts = RemoteQueue("texts", self)
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._callers: dict[int, tuple[object, int]] = {}  # id(caller) → (caller, its number), for one loop turn
        self._caller_numbers = itertools.count(1)
        self._expected = {"images": 0, "texts": 0}
        self._first_ready: wire.Ready | None = None
        self._all_ready = asyncio.Event()

    async def open(self) -> RemoteModel:
        """Connect to every engine; return the model as the first one describes it, once all have answered."""
        for link in self._links:
            link.start()
        await self._all_ready.wait()
        assert self._first_ready is not None
        return RemoteModel(self._first_ready)

    @property
    def alive(self) -> bool:
        """Say whether an engine can take items now."""
        return any(link.ready is not None for link in self._links)

    @property
    def complete(self) -> bool:
        """Say whether every engine is connected."""
        return all(link.ready is not None for link in self._links)

    def unavailable_reason(self) -> str:
        """Say why items cannot be served, or which engine is missing."""
        problems = [link.problem for link in self._links if link.ready is None]
        return "; ".join(problems) or "engine processes connected"

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Report the engine processes' queues (from the pod's notice board) for /health."""
        return self._stats() if self._stats is not None else {}

    async def stop(self) -> None:
        for link in self._links:
            await link.stop()
        for ident in list(self._pending):
            self._settle(ident, Unavailable("the server is shutting down"))
        self.arena.close()

    # --- the pipeline's side
    async def submit(
        self, queue: RemoteQueue, items: Sequence[ImagePayload | torch.Tensor], deadline: float, caller: object | None
    ) -> list[np.ndarray]:
        sent: list[tuple[int, asyncio.Future[np.ndarray]]] = []
        try:
            for payload in items:
                sent.append(await self._send(queue, payload, deadline, caller))
            return list(await asyncio.gather(*(future for _, future in sent)))
        finally:
            for ident, future in sent:
                pending = self._pending.get(ident)
                if pending is not None:  # not answered: the caller went away (gather cancelled it), or a sibling failed
                    future.cancel()
                    pending.link.send_cancel(ident)  # the engine drops it if still queued

    async def _send(
        self, queue: RemoteQueue, payload: ImagePayload | torch.Tensor, deadline: float, caller: object | None
    ) -> tuple[int, asyncio.Future[np.ndarray]]:
        """Write one payload into the arena and queue it for an engine; return its id and future."""
        form, meta, data = payloads.layout(payload)
        size = payloads.nbytes(data)
        offset = self.arena.try_take(size)
        if offset is None:
            offset = await self.arena.take(size, deadline)
        link = least_loaded(self._links, self._home, _spill)
        if link is None or link.ready is None:
            self.arena.give_back(offset, size)
            raise Unavailable(f"no engine process can take items: {self.unavailable_reason()}")
        self.arena.write(offset, data)
        ident = next(self._ids)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending[ident] = _Pending(future, queue.name, offset, size, link)
        queue.waiting += 1
        number = self._caller_number(caller)
        item = wire.Item(ident, queue.name, number, deadline, form, offset, size, meta)
        link.send_item(str(link.ready.info["model"]), item)
        return ident, future

    def _caller_number(self, caller: object | None) -> int:
        if caller is None:
            return next(self._caller_numbers)
        if not self._callers:
            asyncio.get_running_loop().call_soon(self._callers.clear)
        known = self._callers.get(id(caller))
        if known is None:
            known = self._callers[id(caller)] = (caller, next(self._caller_numbers))
        return known[1]

    def expect(self, queue: str, delta: int) -> None:
        self._expected[queue] += delta
        self._home.send_expect(self._expected["images"], self._expected["texts"])

    # --- the links' side
    def link_ready(self, link: EngineLink) -> None:
        if self._first_ready is None:
            self._first_ready = link.ready
        if self.complete:
            self._all_ready.set()
        if link is self._home:
            link.send_expect(self._expected["images"], self._expected["texts"])

    def link_down(self, link: EngineLink) -> None:
        lost = [ident for ident, pending in self._pending.items() if pending.link is link]
        for ident in lost:
            self._settle(ident, Unavailable(f"engine process {link.index} stopped before answering; retry"))
        link.outstanding = 0
        if lost:
            log.warning("engine process %d stopped with %d item(s) of this worker unanswered", link.index, len(lost))

    def results(self, link: EngineLink, results: wire.Results) -> None:
        rows = np.frombuffer(results.vectors, dtype=np.float32).reshape(-1, results.dim) if results.vectors else None
        row = 0
        for outcome in results.outcomes:
            if outcome.code is None:
                assert rows is not None
                self._settle(outcome.id, rows[row])
                row += 1
            else:
                self._settle(outcome.id, wire.outcome_error(outcome.code, outcome.message))

    def _settle(self, ident: int, outcome: np.ndarray | Exception) -> None:
        """Free an item's region and resolve its future (unless its caller went away)."""
        pending = self._pending.pop(ident, None)
        if pending is None:
            return
        self.arena.give_back(pending.offset, pending.size)
        pending.link.outstanding = max(0, pending.link.outstanding - 1)
        (self.images if pending.queue == "images" else self.texts).waiting -= 1
        if pending.future.done():
            return
        if isinstance(outcome, Exception):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)


def _spill(link: EngineLink) -> int:
    return SPILL_BATCHES * (link.ready.max_batch if link.ready is not None else 1)


def engine_opener(paths: Sequence[str], worker: int, settings: Settings, board: PodBoard) -> EngineOpener:
    """Return what connects worker `worker` to the pod's engine processes (create_app's `engine_opener`)."""

    async def open_engines() -> tuple[ItemPreparer, EngineLike]:
        remote = RemoteEngine(paths, worker, settings.engine_arena_mb << 20, stats=board.engines.queue_stats)
        try:
            return await remote.open(), remote
        except BaseException:
            await remote.stop()
            raise

    return open_engines
