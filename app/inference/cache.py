"""Caches of embeddings, keyed by the SHA-256 of the image bytes or of the UTF-8 text: in-process, and tiered."""

from __future__ import annotations

import asyncio
import hashlib
import threading
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
    """A second level shared by processes (STATE_URL); it fails open: a miss, a no-op put."""

    async def get(self, key: str) -> np.ndarray | None:
        """Return the vector stored under `key`, or None (absent, or the store is unreachable)."""
        ...

    async def put(self, key: str, vector: np.ndarray) -> None:
        """Store `vector` under `key`, or do nothing when the store is unreachable."""
        ...


class TieredCache:
    """The in-process LRU in front of a shared store; either level may be absent.

    A hit in the shared store fills the local level. Writes to the shared store run in the background,
    so that an answer never waits for them; `aclose` waits for the ones still running.
    """

    def __init__(self, local: EmbeddingCache | None, shared: SharedVectors | None) -> None:
        self.local = local
        self.shared = shared
        self._writes: set[asyncio.Task[None]] = set()

    def get_local(self, key: str) -> np.ndarray | None:
        """Return the vector held in this process (safe from any thread)."""
        return self.local.get(key) if self.local is not None else None

    async def get_shared(self, key: str) -> np.ndarray | None:
        """Return the shared store's vector for `key`, keeping a copy in this process."""
        if self.shared is None:
            return None
        vector = await self.shared.get(key)
        if vector is not None and self.local is not None:
            self.local.put(key, vector)
        return vector

    async def get(self, key: str) -> np.ndarray | None:
        """Return the vector from the first level that has it."""
        vector = self.get_local(key)
        return vector if vector is not None else await self.get_shared(key)

    def put(self, key: str, vector: np.ndarray) -> None:
        """Keep `vector` here at once and in the shared store soon (call on the event loop)."""
        if self.local is not None:
            self.local.put(key, vector)
        if self.shared is not None:
            task = asyncio.get_running_loop().create_task(self.shared.put(key, vector))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def aclose(self) -> None:
        """Wait for the shared writes still running (each is bounded by the store's timeout)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
