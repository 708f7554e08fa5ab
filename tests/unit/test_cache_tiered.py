"""The tiered cache: reads and writes of the shared level asked for in one loop turn go out as one call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from app.inference.cache import EmbeddingCache, TieredCache


class RecordingStore:
    """A shared level in a dict that records every call it gets."""

    def __init__(self, stored: dict[str, np.ndarray] | None = None) -> None:
        self.stored = dict(stored or {})
        self.reads: list[list[str]] = []
        self.writes: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        self.reads.append(list(keys))
        await self.release.wait()
        return [self.stored.get(k) for k in keys]

    async def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        self.writes.append([k for k, _ in items])
        self.stored.update(items)


def vec(value: float) -> np.ndarray:
    return np.full(4, value, dtype=np.float32)


async def test_tiered_cache_reads_in_one_turn_go_out_as_one_call():
    store = RecordingStore({"a": vec(1), "c": vec(3)})
    cache = TieredCache(EmbeddingCache(10), store)
    got = await asyncio.gather(cache.get("a"), cache.get("b"), cache.get("c"))
    assert store.reads == [["a", "b", "c"]]
    assert [None if v is None else v[0] for v in got] == [1, None, 3]
    assert cache.get_local("a") is not None and cache.get_local("b") is None  # hits fill the local level


async def test_tiered_cache_reads_in_later_turns_are_separate_calls():
    store = RecordingStore({"a": vec(1)})
    cache = TieredCache(None, store)
    assert (await cache.get("a")) is not None
    assert (await cache.get("b")) is None
    assert store.reads == [["a"], ["b"]]


async def test_tiered_cache_local_hit_never_asks_the_store():
    store = RecordingStore()
    local = EmbeddingCache(10)
    local.put("a", vec(1))
    cache = TieredCache(local, store)
    assert (await cache.get("a"))[0] == 1
    assert store.reads == []


async def test_tiered_cache_writes_in_one_turn_go_out_as_one_call_after_the_answer():
    store = RecordingStore()
    cache = TieredCache(EmbeddingCache(10), store)
    for i, key in enumerate("xyz"):
        cache.put(key, vec(i))
    assert store.writes == []  # not yet: the caller answers first
    assert cache.get_local("y")[0] == 1
    await cache.aclose()
    assert store.writes == [["x", "y", "z"]]
    assert sorted(store.stored) == ["x", "y", "z"]


async def test_tiered_cache_cancelled_reader_leaves_the_others_their_answers():
    store = RecordingStore({"a": vec(1), "b": vec(2)})
    store.release.clear()
    cache = TieredCache(None, store)
    first = asyncio.ensure_future(cache.get("a"))
    second = asyncio.ensure_future(cache.get("b"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    first.cancel()
    store.release.set()
    assert (await second)[0] == 2
    with pytest.raises(asyncio.CancelledError):
        await first
    assert store.reads == [["a", "b"]]
