"""The shared state of every worker and pod: one Redis connection pool and the pieces built on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from app.settings import Settings
from app.state.cache import RedisEmbeddingCache
from app.state.errors import STORE_ERRORS
from app.state.gate import RedisGate
from app.state.keys import DEFAULT_PREFIX

log = logging.getLogger("app.state")

DEFAULT_TIMEOUT_S = 0.5
DEFAULT_MAX_CONNECTIONS = 64


def connect(url: str, *, timeout_s: float, max_connections: int) -> Redis:
    """Return a client on a pool of at most `max_connections` to `url`, every wait bounded by `timeout_s`."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        # Waiting for a free connection, connecting, and each read or write: none past the timeout.
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        # One immediate retry, on a broken connection only. redis-py's default retries with backoff for
        # seconds, past any request's deadline; none at all would fail one request per pooled connection
        # after the store restarts or drops an idle connection, which the pool's check does not notice.
        # A timeout is not retried: the command may be running on a slow store.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis(connection_pool=pool)


class SharedState:
    """One pool to `url` (and one to `cache_url` when the cache lives elsewhere) and the pieces on it.

    `gate` checks nonces and, when a rate is set, rate limits. Build it with `from_url`; close it with `aclose`.
    """

    def __init__(
        self,
        client: Redis,
        cache_client: Redis | None,
        *,
        model_id: str | None,
        cache_ttl_s: int,
        rate_items_per_s: float | None,
        rate_burst: int | None,
        timeout_s: float,
        prefix: str,
    ) -> None:
        self._client = client
        self._cache_client = cache_client
        self.gate = RedisGate(client, rate=rate_items_per_s, burst=rate_burst, timeout_s=timeout_s, prefix=prefix)
        self.cache = RedisEmbeddingCache(
            cache_client or client, model_id=model_id, ttl_s=cache_ttl_s, timeout_s=timeout_s, prefix=prefix
        )
        self._timeout_s = timeout_s

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        model_id: str | None = None,
        cache_ttl_s: int,
        rate_items_per_s: float | None = None,
        rate_burst: int | None = None,
        cache_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        prefix: str = DEFAULT_PREFIX,
    ) -> SharedState:
        """Build the shared state on `url` (e.g. `redis://127.0.0.1:6379/0`); connects lazily, on first use.

        `model_id` names the embedding space the cached vectors come from (`ModelInfo.fingerprint`), so that
        pods serving different ones never read each other's vectors; without it the cache shares nothing
        until `cache.use_model` is called, once the model is loaded. `rate_burst` defaults to one second of
        `rate_items_per_s`.
        """
        if timeout_s <= 0:
            raise ValueError(f"the shared-state timeout must be above 0 s, not {timeout_s}")
        client = connect(url, timeout_s=timeout_s, max_connections=max_connections)
        cache_client = None
        if cache_url is not None and cache_url != url:
            cache_client = connect(cache_url, timeout_s=timeout_s, max_connections=max_connections)
        return cls(
            client,
            cache_client,
            model_id=model_id,
            cache_ttl_s=cache_ttl_s,
            rate_items_per_s=rate_items_per_s,
            rate_burst=rate_burst,
            timeout_s=timeout_s,
            prefix=prefix,
        )

    async def ping(self) -> bool:
        """Say whether every store answers within the timeout (for /health); never raises."""
        clients = [self._client] if self._cache_client is None else [self._client, self._cache_client]
        for client in clients:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await client.ping()
            except STORE_ERRORS:
                return False
        return True

    def count_failures(self, count: Callable[[], None]) -> None:
        """Call `count()` on every failed call to the store, from now on (the metrics' counter)."""
        self.gate.failures.on_failure = count
        self.cache.failures.on_failure = count

    def failure_counts(self) -> dict[str, int]:
        """Return how many calls to the store have failed, by piece (for /metrics)."""
        return {"gate": self.gate.failures.count, "cache": self.cache.failures.count}

    async def aclose(self) -> None:
        """Close every connection of the pools."""
        if self._cache_client is not None:
            await self._cache_client.aclose()
        await self._client.aclose()


# How often each process checks that the store answers (for /metrics and the log).
WATCH_EVERY_S = 2.0


def open_shared_state(settings: Settings) -> SharedState | None:
    """Build the shared state STATE_URL names, or None without it (everything stays in the process)."""
    if settings.state_url is None:
        return None
    # The cache shares vectors once the model is loaded and its fingerprint known (cache.use_model).
    return SharedState.from_url(
        settings.state_url.get_secret_value(),
        cache_ttl_s=settings.cache_ttl_s,
        rate_items_per_s=settings.rate_limit_items_per_s,
        rate_burst=settings.rate_limit_burst,
        timeout_s=settings.state_timeout_s,
    )


class _Watched(Protocol):
    state: SharedState | None
    state_up: bool


async def watch_shared_state(services: _Watched, stop: asyncio.Event) -> None:
    """Ping the store every few seconds until `stop` is set; keep `services.state_up` current, log each change.

    It ends on `stop`, not on cancellation alone: on Python 3.11 redis-py's waits can swallow a cancellation.
    """
    state = services.state
    if state is None:
        return
    # What the log last said, apart from `state_up`: /health updates that too, and a change it sees first
    # must still be logged here.
    logged_up = services.state_up
    while not stop.is_set():
        up = await state.ping()
        if up != logged_up:
            if up:
                log.warning("the shared store (STATE_URL) answers again")
            else:
                log.error("the shared store (STATE_URL) is unreachable: signed requests with a nonce get 503")
            logged_up = up
        services.state_up = up
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WATCH_EVERY_S):
                await stop.wait()
