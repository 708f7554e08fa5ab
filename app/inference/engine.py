"""Cross-request dynamic batching in front of one model thread."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from app.errors import Overloaded, Unavailable
from app.inference.batching import WAVE_MEMORY, BatchLimits, Dispatch, GatherState, decide
from app.inference.payload import ImagePayload

log = logging.getLogger("app.inference.engine")

# Weight of the newest forward pass in the running average of forward time.
FORWARD_EWMA = 0.2
# Most batches between the start of their forward pass and the delivery of their vectors (ENGINE_OVERLAP):
# the next batch is prepared while the device runs this one, and no more.
IN_FLIGHT = 2
P = TypeVar("P")
# One row per payload; an Exception in place of a row fails only that item (see app.inference.model_guard).
Rows = np.ndarray | Sequence[np.ndarray | Exception]


@runtime_checkable
class PendingRows(Protocol):
    """A batch whose forward pass runs on the device; wait() blocks until its rows are back."""

    def wait(self) -> Rows:
        """Return one row (or an Exception) per input, in order."""
        ...


RunBatch = Callable[[list[P]], Rows | PendingRows]


class BatchModel(Protocol):
    """What the engine runs: one forward pass per batch of each modality (an Embedder, or one guarding it)."""

    def encode_images(self, pixels: list[ImagePayload]) -> Rows:
        """Return one row (or an Exception) per input, in order."""
        ...

    def encode_texts(self, tokens: list[torch.Tensor]) -> Rows:
        """Return one row (or an Exception) per input, in order."""
        ...


@runtime_checkable
class OverlappingModel(BatchModel, Protocol):
    """A model that can start an image batch and return while the device runs it."""

    def start_images(self, pixels: list[ImagePayload]) -> PendingRows | Rows:
        """Start the forward pass; return its pending rows (or the rows, when it ran at once)."""
        ...


class SubmitQueue(Protocol[P]):
    """What the pipeline submits one modality's items to: a BatchQueue here, or the engine process's (app.engine)."""

    @property
    def name(self) -> str:
        """Name the queue: images or texts."""
        ...

    @property
    def depth(self) -> int:
        """Items waiting for a batch, as far as this process knows."""
        ...

    async def submit(
        self, payloads: list[P], deadline: float = math.inf, caller: object | None = None
    ) -> list[np.ndarray]:
        """Queue the payloads together and wait for their vectors, in order."""
        ...

    def expecting(self, count: int) -> AbstractContextManager[None]:
        """Announce `count` items being prepared for this queue until the block ends."""
        ...


class EngineLike(Protocol):
    """The object the pipeline submits to: the image and text queues of this process's Engine, or of an engine process."""

    @property
    def images(self) -> SubmitQueue[ImagePayload]:
        """The image queue."""
        ...

    @property
    def texts(self) -> SubmitQueue[torch.Tensor]:
        """The text queue."""
        ...

    @property
    def local(self) -> bool:
        """Say whether the model runs in this process (its GPU memory can be read here)."""
        ...

    @property
    def alive(self) -> bool:
        """Say whether items can be served now."""
        ...

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Report queue depths and batch sizes for /health."""
        ...

    def unavailable_reason(self) -> str:
        """Say why items cannot be served while `alive` is false."""
        ...

    async def stop(self) -> None:
        """Stop taking items; the ones still queued fail with Unavailable."""
        ...


class QueueObserver(Protocol):
    """What the engine reports about items leaving a queue (the app's metrics implement it)."""

    def dispatched(self, queue: str, waits_s: list[float]) -> None:
        """Items went to the model after waiting `waits_s` seconds each in the queue."""

    def dropped(self, queue: str, reason: str, count: int) -> None:
        """Items were dropped before the model: reason is "cancelled" (caller gone) or "deadline"."""


@dataclass(slots=True)
class Ticket(Generic[P]):
    """One queued payload: its future (resolved only once the queue no longer holds the payload), deadline and caller."""

    payload: P
    future: asyncio.Future[np.ndarray]
    deadline: float = math.inf  # the queue's clock reading after which the item is not worth computing
    enqueued: float = 0.0
    caller: object = None  # the same object for every item of one request
    abandoned: bool = False

    def abandon(self) -> None:
        """Give the item up: dropped unrun if still queued, its future failed then (or answered by its batch)."""
        self.abandoned = True


@dataclass(slots=True)
class QueueStats:
    """What /health shows of one queue."""

    batches: int = 0
    items: int = 0
    last_batch_size: int = 0
    max_batch_size_seen: int = 0


class BatchQueue(Generic[P]):
    """One modality's queue; a worker task turns waiting items into model batches (see app.inference.batching).

    Every time it keeps (enqueued, deadlines, the gather's start, forward passes) is a reading of `clock`.
    A run that returns PendingRows has its rows waited for on `readback`, while the next batch is gathered
    and started on `executor`; at most IN_FLIGHT batches are between start and delivery.
    """

    def __init__(
        self,
        name: str,
        run: RunBatch[P],
        executor: ThreadPoolExecutor,
        max_batch: int,
        max_wait_s: float,
        observer: QueueObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        readback: ThreadPoolExecutor | None = None,
    ) -> None:
        self.name = name
        self._observer = observer
        self._run = run
        self._executor = executor
        self._readback = readback or executor
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._delivering: set[asyncio.Task[None]] = set()
        self._limits = BatchLimits(max_batch, max_wait_s)
        self._clock = clock
        self._queue: asyncio.Queue[Ticket[P]] = asyncio.Queue()
        self._incoming = 0  # items announced by expecting() and not yet submitted
        self._forward_s = 0.0  # running average of one forward pass
        self._arrived: set[object] = set()  # callers that submitted since the last dispatch
        self._waves: deque[int] = deque(maxlen=WAVE_MEMORY)
        self._idle_since = -math.inf  # when the last forward pass ended
        self.stats = QueueStats()
        self._task: asyncio.Task[None] | None = None
        self._gathering: list[Ticket[P]] = []  # the batch being gathered

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        """Say whether the worker task is running."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name=f"engine-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Batches already on the device are delivered: their forward pass is running anyway.
        await asyncio.gather(*self._delivering, return_exceptions=True)
        leftovers, self._gathering = self._gathering, []  # taken from the queue by a gather that was cut
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(Unavailable("the engine is shutting down"))

    async def submit(
        self, payloads: list[P], deadline: float = math.inf, caller: object | None = None
    ) -> list[np.ndarray]:
        """Queue the payloads together and wait for their vectors, in order.

        Items still queued at `deadline` (a reading of the queue's clock, time.monotonic() by default) fail
        with Overloaded unrun.
        Calls that pass the same `caller` count as one client in a wave; by default each call is its own.
        """
        items = self.enqueue(payloads, deadline, caller)
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        finally:
            for item in items:
                item.future.cancel()  # no-op when done; drops leftovers when the caller went away

    def enqueue(self, payloads: list[P], deadline: float = math.inf, caller: object | None = None) -> list[Ticket[P]]:
        """Queue the payloads together; return their tickets at once (`submit` without the wait).

        A ticket's future is resolved only when the queue no longer holds its payload (dropped unrun, or its
        batch done), provided nobody cancels it: the engine process frees a payload's shared memory then.
        """
        if not self.alive:
            raise Unavailable("the engine is not running")
        loop = asyncio.get_running_loop()
        now = self._clock()
        caller = caller if caller is not None else object()
        items = [Ticket(p, loop.create_future(), deadline, now, caller) for p in payloads]
        self._arrived.add(caller)
        for item in items:
            self._queue.put_nowait(item)
        return items

    @contextmanager
    def expecting(self, count: int) -> Iterator[None]:
        """Announce `count` items being downloaded, decoded or tokenised for this queue until the block ends."""
        self.adjust_incoming(count)
        try:
            yield
        finally:
            self.adjust_incoming(-count)

    def adjust_incoming(self, delta: int) -> None:
        """Count `delta` more items announced (fewer when negative): the engine process's workers announce theirs."""
        self._incoming += delta

    async def _gather(self) -> list[Ticket[P]]:
        """Wait for an item, then take more until the batching policy sends the batch (app.inference.batching)."""
        batch = self._gathering = [await self._queue.get()]
        started = self._clock()
        callers = {batch[0].caller}
        waves = tuple(self._waves)
        waited_out = False
        while True:
            while len(batch) < self._limits.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                callers.add(item.caller)
                waited_out = False  # an item that landed as the wait ran out counts as an arrival
            now = self._clock()
            state = GatherState(
                self._limits,
                items=len(batch),
                callers=len(callers),
                started=started,
                newest_enqueued=batch[-1].enqueued,
                idle_since=self._idle_since,
                waves=waves,
                incoming=self._incoming,
                forward_s=self._forward_s,
                waited_out=waited_out,
            )
            decision = decide(state, now)
            if isinstance(decision, Dispatch):
                break
            arrived = await self._next(decision.until)
            waited_out = arrived is None
            if arrived is not None:
                batch.append(arrived)
                callers.add(arrived.caller)
        self._waves.append(len(self._arrived))
        self._arrived.clear()
        self._gathering = []
        return self._live(batch)

    async def _next(self, until: float) -> Ticket[P] | None:
        """Return the next item, or None once the clock reaches `until`."""
        while (left := until - self._clock()) > 0:
            try:
                return await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                pass  # the loop's timer ran out: the clock says whether `until` has come
        return None

    def _live(self, batch: list[Ticket[P]]) -> list[Ticket[P]]:
        """Drop the items whose caller has gone or whose deadline has passed; report the rest's wait."""
        now = self._clock()
        live, cancelled, expired = [], 0, 0
        for item in batch:
            if item.future.done() or item.abandoned:
                cancelled += 1
                if not item.future.done():
                    item.future.set_exception(Unavailable("the request was given up by its caller"))
            elif now >= item.deadline:
                expired += 1
                item.future.set_exception(Overloaded("the request's deadline passed while it waited for the model"))
            else:
                live.append(item)
        if self._observer is not None:
            if cancelled:
                self._observer.dropped(self.name, "cancelled", cancelled)
            if expired:
                self._observer.dropped(self.name, "deadline", expired)
            if live:
                self._observer.dispatched(self.name, [now - item.enqueued for item in live])
        return live

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            try:
                await self._slots.acquire()
                started = self._clock()
                outcome = await loop.run_in_executor(self._executor, self._run, [i.payload for i in batch])
            except asyncio.CancelledError:
                self._fail(batch, Unavailable("the engine is shutting down"))
                raise
            except Exception as exc:
                self._slots.release()
                log.exception("%s batch of %d failed", self.name, len(batch))
                self._fail(batch, exc)
                continue
            if isinstance(outcome, PendingRows):
                task = asyncio.create_task(self._finish(batch, outcome, started), name=f"engine-{self.name}-readback")
                self._delivering.add(task)
                task.add_done_callback(self._delivering.discard)
                continue
            self._slots.release()
            self._deliver(batch, outcome, started)

    async def _finish(self, batch: list[Ticket[P]], pending: PendingRows, started: float) -> None:
        """Wait for a started batch's rows on the readback thread, then answer its items."""
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self._readback, pending.wait)
        except Exception as exc:
            log.exception("%s batch of %d failed", self.name, len(batch))
            self._fail(batch, exc)
        else:
            self._deliver(batch, rows, started)
        finally:
            self._slots.release()

    def _fail(self, batch: list[Ticket[P]], exc: Exception) -> None:
        self._idle_since = self._clock()
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)

    def _deliver(self, batch: list[Ticket[P]], vectors: Rows, started: float) -> None:
        self._idle_since = self._clock()
        self._record(len(batch), self._idle_since - started)
        for item, vector in zip(batch, vectors, strict=True):
            if item.future.done():
                continue
            if isinstance(vector, Exception):
                item.future.set_exception(vector)
            else:
                item.future.set_result(vector)

    def _record(self, size: int, seconds: float) -> None:
        self._forward_s = (
            seconds if not self._forward_s else (1 - FORWARD_EWMA) * self._forward_s + FORWARD_EWMA * seconds
        )
        s = self.stats
        s.batches += 1
        s.items += size
        s.last_batch_size = size
        s.max_batch_size_seen = max(s.max_batch_size_seen, size)


def model_executor() -> ThreadPoolExecutor:
    """Return the single thread that loads the model and runs every batch.

    One thread, so that torch starts one team of OpenMP workers (see app.inference.preprocess for the cost of more).
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")


class Engine:
    """The image and text queues sharing a single model thread."""

    local = True

    def __init__(
        self,
        embedder: BatchModel,
        max_batch: int,
        max_wait_ms: float,
        observer: QueueObserver | None = None,
        model_thread: ThreadPoolExecutor | None = None,
        clock: Callable[[], float] = time.monotonic,
        overlap: bool = False,
    ) -> None:
        # Pass the one-thread executor the model was loaded on, so that one thread owns all its torch work.
        self._owns_executor = model_thread is None
        self._executor = model_thread or model_executor()
        # The thread that waits for started image batches (overlap): the model thread starts the next meanwhile.
        self._readback = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readback")
        wait_s = max_wait_ms / 1000.0
        run_images: RunBatch[ImagePayload] = embedder.encode_images
        if overlap and isinstance(embedder, OverlappingModel):
            run_images = embedder.start_images
        self.images = BatchQueue(
            "images", run_images, self._executor, max_batch, wait_s, observer, clock, readback=self._readback
        )
        self.texts = BatchQueue("texts", embedder.encode_texts, self._executor, max_batch, wait_s, observer, clock)

    @property
    def alive(self) -> bool:
        """Say whether both workers are running."""
        return self.images.alive and self.texts.alive

    def start(self) -> None:
        self.images.start()
        self.texts.start()

    async def stop(self) -> None:
        await self.images.stop()
        await self.texts.stop()
        self._readback.shutdown(wait=False, cancel_futures=True)
        if self._owns_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def unavailable_reason(self) -> str:
        return "engine stopped"

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Report queue depths and batch sizes for /health."""
        return {
            q.name: {
                "queue_depth": q.depth,
                "batches": q.stats.batches,
                "items": q.stats.items,
                "last_batch_size": q.stats.last_batch_size,
                "max_batch_size_seen": q.stats.max_batch_size_seen,
            }
            for q in (self.images, self.texts)
        }
