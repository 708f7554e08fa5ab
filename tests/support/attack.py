"""Helpers shared by the attack suite (tests/test_attack_*.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.fetch.download import ImageFetcher, make_session
from app.fetch.urlguard import DEFAULT_PORTS, GuardedResolver, Lookup, UrlGuard, UrlPolicy
from tests.support.data import jpeg_bytes
from tests.support.hostile import HostileServer
from tests.support.netmap import PUBLIC_V4, FakeDns, RoutedResolver

PHOTO = jpeg_bytes(64, 48, 3)
# "cdn.test" is a public web server as far as the guard can tell; connections to it are routed
# to the hostile server on 127.0.0.1.
PUBLIC_HOST = "cdn.test"


@asynccontextmanager
async def guarded_fetcher(
    lookup: Lookup,
    *,
    routes: dict[str, int] | None = None,
    extra_ports: tuple[int, ...] = (),
    allow_private: bool = False,
    allowed_hosts: tuple[str, ...] = (),
    max_bytes: int = 1 << 20,
    timeout_s: float = 3,
) -> AsyncIterator[ImageFetcher]:
    """An ImageFetcher with the real guard (ON unless told) on `lookup`, routing accepted addresses."""
    policy = UrlPolicy(
        allow_private=allow_private, allowed_ports=DEFAULT_PORTS | set(extra_ports), allowed_hosts=allowed_hosts
    )
    guard = UrlGuard(policy, lookup)
    session = make_session(4, RoutedResolver(GuardedResolver(guard), routes or {}))
    try:
        yield ImageFetcher(session, guard, max_bytes=max_bytes, timeout_s=timeout_s, concurrency=4)
    finally:
        await session.close()


def public_dns(hostile: HostileServer, records: dict[str, list[str]] | None = None) -> tuple[FakeDns, dict[str, int]]:
    """DNS where PUBLIC_HOST is a public address routed to `hostile`, plus `records`; and the routes."""
    dns = FakeDns({PUBLIC_HOST: [PUBLIC_V4], **(records or {})})
    return dns, {PUBLIC_V4: hostile.port}
