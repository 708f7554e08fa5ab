"""An LRU cache of embeddings, keyed by the SHA-256 of the image bytes or of the UTF-8 text."""

from __future__ import annotations

import hashlib
import threading

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
