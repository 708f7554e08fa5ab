"""Caches of embeddings, keyed by the SHA-256 of the image bytes or of the UTF-8 text: in-process, and tiered."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Protocol

import numpy as np
from cachetools import LRUCache


def image_key(data: bytes) -> str:
    """Return the cache key of an image: its kind and the SHA-256 of its bytes."""
    return "image:" + hashlib.sha256(data).hexdigest()


def text_key(text: str) -> str:
    """Return the cache key of a text: its kind and the SHA-256 of its UTF-8 bytes."""
    return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """At most `max_entries` vectors, least recently used evicted first; safe to use from any thread.

    Stored vectors are private read-only copies, so a cached answer cannot change and does not keep
    the batch it was computed in alive.
    """

    def __init__(self, max_entries: int) -> None:
        self._entries: LRUCache[str, np.ndarray] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, vector: np.ndarray) -> None:
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.setflags(write=False)
        with self._lock:
            self._entries[key] = stored


class SharedVectors(Protocol):
    """A second level shared by processes (STATE_URL); it fails open: misses, a no-op put."""

    async def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """Return the vector stored under each key, or None (absent, or the store is unreachable)."""
        ...

    async def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Store every (key, vector), or do nothing when the store is unreachable."""
        ...


class TieredCache:
    """The in-process LRU in front of a shared store; either level may be absent.

    With several models, each has its own TieredCache on the one LRU: `scope` (the model's) prefixes its
    keys there, and its shared store is the model's own (RedisEmbeddingCache.for_model).

    A hit in the shared store fills the local level. Reads of the shared store asked for in one turn of
    the event loop go out together, as one call; so do writes, which run in the background so that an
    answer never waits for them. `aclose` waits for the writes still running.
    """

    def __init__(self, local: EmbeddingCache | None, shared: SharedVectors | None, scope: str = "") -> None:
        self.local = local
        self.shared = shared
        self._scope = scope
        self._reads: list[tuple[str, asyncio.Future[np.ndarray | None]]] = []
        self._writes: list[tuple[str, np.ndarray]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def get_local(self, key: str) -> np.ndarray | None:
        """Return the vector held in this process (safe from any thread)."""
        return self.local.get(self._scope + key) if self.local is not None else None

    async def get_shared(self, key: str) -> np.ndarray | None:
        """Return the shared store's vector for `key`, keeping a copy in this process."""
        if self.shared is None:
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray | None] = loop.create_future()
        self._reads.append((key, future))
        if len(self._reads) == 1:
            loop.call_soon(self._start, self._read_batch)
        vector = await future
        if vector is not None and self.local is not None:
            self.local.put(self._scope + key, vector)
        return vector

    async def get(self, key: str) -> np.ndarray | None:
        """Return the vector from the first level that has it."""
        vector = self.get_local(key)
        return vector if vector is not None else await self.get_shared(key)

    def put(self, key: str, vector: np.ndarray) -> None:
        """Keep `vector` here at once and in the shared store soon (call on the event loop)."""
        if self.local is not None:
            self.local.put(self._scope + key, vector)
        if self.shared is not None:
            self._writes.append((key, vector))
            if len(self._writes) == 1:
                asyncio.get_running_loop().call_soon(self._start, self._write_batch)

    def _start(self, batch: Callable[[], Coroutine[None, None, None]]) -> None:
        task = asyncio.get_running_loop().create_task(batch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_batch(self) -> None:
        reads, self._reads = self._reads, []
        assert self.shared is not None
        try:
            vectors = await self.shared.get_many([key for key, _ in reads])
        except BaseException as exc:
            # The store fails open inside get_many: only a bug or a cancellation lands here.
            for _, future in reads:
                if not future.done():
                    future.set_exception(exc)
            raise
        for (_, future), vector in zip(reads, vectors, strict=True):
            if not future.done():  # its request may have been cancelled meanwhile
                future.set_result(vector)

    async def _write_batch(self) -> None:
        writes, self._writes = self._writes, []
        if writes and self.shared is not None:  # empty when aclose already took them
            await self.shared.put_many(writes)

    async def aclose(self) -> None:
        """Wait for the shared reads and writes still running (each is bounded by the store's timeout)."""
        if self._writes:
            self._start(self._write_batch)  # its turn may not have come yet
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
