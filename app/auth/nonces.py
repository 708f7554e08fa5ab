"""Nonces and rate limits behind a door (`Gate`), and the in-process door: a bounded nonce store.

With STATE_URL the door is shared by every process (`app.state.gate.RedisGate`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from app.errors import Overloaded

# Seconds a nonce is kept past its timestamp's acceptance window: room for the clocks of different
# processes and pods to disagree a little.
NONCE_MARGIN_S = 5.0


def nonce_ttl_s(max_skew_s: int) -> float:
    """Return how long to keep a nonce from its admission: its timestamp's whole acceptance window, and a margin.

    A timestamp `ts` is accepted while the server's clock, rounded down to a second, is within
    `max_skew_s` of it: from `ts - max_skew_s` to just before `ts + max_skew_s + 1`. A nonce admitted at
    the window's first moment must outlive its last, so it is kept 2 × max_skew_s + 1 s, plus the margin.
    """
    return 2 * max_skew_s + 1 + NONCE_MARGIN_S


class Gate(Protocol):
    """Remember nonces and spend rate limits, in this process or in a store every process shares (app.state.gate)."""

    async def admit(self, nonce: str | None, nonce_ttl_s: float, key_id: str, items: int) -> bool:
        """Return False for a nonce already seen; else spend `items` of `key_id`'s budget and remember the nonce.

        Raise RateLimited when the budget is spent.
        """
        ...


class MemoryNonceStore:
    """In-process nonce store, bounded: when full of live nonces it refuses new ones."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    async def remember(self, nonce: str, ttl_s: float) -> bool:
        """Store `nonce` for `ttl_s`; return False when it was already there."""
        now = self._clock()
        with self._lock:
            # Insertion order is expiry order because every entry has the same ttl.
            while self._seen and next(iter(self._seen.values())) <= now:
                self._seen.popitem(last=False)
            if nonce in self._seen:
                return False
            if len(self._seen) >= self._max:
                # Evicting a live nonce would re-open it to replay, so refuse instead.
                raise Overloaded("too many recent nonces; retry shortly")
            self._seen[nonce] = now + ttl_s
            return True

    async def admit(self, nonce: str | None, nonce_ttl_s: float, key_id: str, items: int) -> bool:
        """Remember `nonce` (a process has no rate limit of its own: that needs STATE_URL)."""
        return True if nonce is None else await self.remember(nonce, nonce_ttl_s)
