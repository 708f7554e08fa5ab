"""Backpressure: a bound on items admitted and not yet answered, and the count of requests in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from app.errors import Overloaded


class Admission:
    """Admit at most `limit` items (images and texts) at once; a request that does not fit is refused whole.

    Used from the event loop only (no lock needed).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0

    @contextmanager
    def admit(self, items: int) -> Iterator[None]:
        """Hold room for `items` until the block ends, or raise Overloaded at once."""
        if self.current + items > self.limit:
            raise Overloaded(f"the server is at capacity ({self.current} of {self.limit} items queued); retry shortly")
        self.current += items
        try:
            yield
        finally:
            self.current -= items


class RequestTracker:
    """Count the /v1 requests in flight, so that a drain can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; return False if `timeout_s` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
