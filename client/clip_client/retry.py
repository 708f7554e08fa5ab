"""When to retry, and how long to wait: capped exponential backoff with full jitter."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Statuses that say "not now" rather than "no": retried (408: the body came too slowly this time).
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`attempts` in all (1 = no retry); before attempt n+1 wait U(0, min(cap, base * 2**(n-1))).

    A `Retry-After` from the server is a floor on that wait (itself capped by `max_retry_after_s`).
    `sleep` and `random` are injectable so tests can see the exact delays without waiting.
    """

    attempts: int = 4
    base_s: float = 0.5
    cap_s: float = 8.0
    max_retry_after_s: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)
    random: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_s < 0 or self.cap_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("delays must not be negative")

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Return the wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        wait = ceiling * self.random()
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_retry_after_s))
        return wait


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Read a `Retry-After` header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
