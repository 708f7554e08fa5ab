"""The second level of the embedding cache: vectors shared by every process that points at the same Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import numpy as np
from redis.asyncio import Redis

from app.state.errors import STORE_ERRORS
from app.state.failures import FailureLog
from app.state.keys import DEFAULT_PREFIX, cache_key, model_tag

log = logging.getLogger("app.state.cache")

# Little-endian float32 whatever the host, so every process reads back the bytes another wrote.
_DTYPE = np.dtype("<f4")


class RedisEmbeddingCache:
    """Vectors as raw float32 bytes under `<prefix>:emb:<model tag>:<key>`, each expiring after `ttl_s`.

    The tag names the embedding space (`ModelInfo.fingerprint`), known once the model is loaded
    (`use_model`); until then every read is a miss and every write does nothing.
    Fails open: when the store is down, slow or full, a read is a miss and a write does nothing; each
    failure is counted in `failures` and logged at most once per interval.
    """

    def __init__(
        self,
        client: Redis,
        *,
        model_id: str | None = None,
        ttl_s: int,
        timeout_s: float,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if ttl_s < 1:
            raise ValueError(f"the cache TTL must be at least 1 second, not {ttl_s}")
        self._client = client
        self._tag: str | None = None
        if model_id is not None:
            self.use_model(model_id)
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._prefix = prefix
        self.failures = FailureLog(log, "embedding cache")

    def for_model(self, model_id: str) -> RedisEmbeddingCache:
        """Return this cache on the same connection, tagged with `model_id`: one model's vectors of several served."""
        view = RedisEmbeddingCache(
            self._client, model_id=model_id, ttl_s=self._ttl_s, timeout_s=self._timeout_s, prefix=self._prefix
        )
        view.failures = self.failures  # one count of the store's failures, whichever model met them
        return view

    def use_model(self, model_id: str) -> None:
        """Share vectors with every process whose `model_id` (the embedding space's fingerprint) is this one."""
        if not model_id:
            raise ValueError("the shared cache needs the fingerprint of an embedding space, not ''")
        self._tag = model_tag(model_id)

    def store_key(self, key: str) -> str:
        """Return the Redis key of the in-process cache key `key`."""
        if self._tag is None:
            raise RuntimeError("the shared cache has no model yet: use_model() first")
        return cache_key(self._prefix, self._tag, key)

    async def get(self, key: str) -> np.ndarray | None:
        """Return the cached vector (read-only float32), or None on a miss or a store failure."""
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """Return the cached vector of each key in one round trip; None for each miss, all None on a failure."""
        if not keys or self._tag is None:
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self._timeout_s):
                values = await self._client.mget([self.store_key(k) for k in keys])
        except STORE_ERRORS as exc:
            self.failures.note(exc)
            return [None] * len(keys)
        return [_decode(v) for v in values]

    async def put(self, key: str, vector: np.ndarray) -> None:
        """Store `vector` under `key` for the TTL; do nothing when the store fails."""
        await self.put_many([(key, vector)])

    async def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Store every (key, vector) in one round trip; do nothing when the store fails."""
        if not items or self._tag is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, vector in items:
                        pipe.set(self.store_key(key), _encode(vector), ex=self._ttl_s)
                    await pipe.execute()
        except STORE_ERRORS as exc:
            self.failures.note(exc)


def _encode(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=_DTYPE).tobytes()


def _decode(value: object) -> np.ndarray | None:
    # A value that is not whole float32s was not written by this cache: a miss, not an error.
    if not isinstance(value, bytes) or len(value) == 0 or len(value) % _DTYPE.itemsize:
        return None
    # frombuffer over immutable bytes gives a read-only array, as the in-process cache hands out.
    return np.frombuffer(value, dtype=_DTYPE).astype(np.float32, copy=False)
