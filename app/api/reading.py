"""One request body as the app reads it: counted, timed and charged to the process's budget (app.api.limits)."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive

from app.errors import Overloaded, RequestTimeout, RequestTooLarge

_BUSY = "the server holds too many request bodies at once (MAX_BUFFERED_REQUEST_BYTES); retry shortly"
# Where the app finds the reader of its request, to charge what parsing the body takes (`BodyReader.charge`).
STATE_KEY = "body_reader"


def parse_cost(raw: bytes) -> int:
    """Return the most bytes that parsing the JSON `raw` may add, while `raw` itself is still held.

    Python keeps a string at one byte per character when every character is ASCII, but one character
    past U+FFFF, sent as UTF-8 or as a `\\u` escape, makes its whole string four bytes per character,
    and the parser holds a UTF-8 copy meanwhile (measured by bench/body_memory.py).
    """
    plain = raw.isascii() and b"\\u" not in raw
    return len(raw) * (1 if plain else 5)


class BodyBudget:
    """Bytes of request bodies a process may hold at once; used on the event loop only, so without a lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def fits(self, size: int) -> bool:
        """Say whether `size` more bytes would fit now."""
        return self.used + size <= self.capacity

    def take(self, size: int) -> bool:
        """Charge `size` bytes if they fit; say whether they did."""
        if not self.fits(size):
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        """Give back bytes taken before."""
        self.used -= size


class BodyReader:
    """Wraps `receive`: the body's messages are counted, timed and charged; what follows them passes as is.

    Raises, into the app that reads: RequestTooLarge past `max_bytes`; RequestTimeout once `timeout_s`
    have passed since the reader was made (at the request's start); Overloaded when the budget has no
    room for the declared size (before the first byte is read) or for the bytes that arrive.
    """

    def __init__(
        self, receive: Receive, budget: BodyBudget, *, declared: int | None, max_bytes: int, timeout_s: float
    ) -> None:
        self._receive = receive
        self._budget = budget
        self._declared = declared
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._deadline = asyncio.get_running_loop().time() + timeout_s
        self.received = 0
        self.charged = 0
        # The server was asked for the body (and so sent "100 Continue" to a caller waiting for it).
        self.started = False
        self.complete = False
        # A limit cut the body short: the connection cannot carry another request.
        self.broken = False

    async def receive(self) -> Message:
        """Return the next message; the body's ones within the limits, else raise (see the class)."""
        if self.complete:
            return await self._receive()
        # Charged only as bytes arrive: a caller that declares much and sends little holds nothing.
        if not self.started and not self._budget.fits(self._declared or 0):
            raise Overloaded(_BUSY)
        message = await self._next()
        size = len(message.get("body", b""))
        if not self._budget.take(size):
            self.broken = True
            raise Overloaded(_BUSY)
        self.charged += size
        return message

    async def settle(self, waits_for_continue: bool) -> bool:
        """Before the answer starts: drop what is left of the body; say whether the connection may carry another request.

        The caller sends its whole body before it reads the answer, so the rest is read (nothing kept or
        charged) within the limits. Not after a limit cut the body short, nor when the caller waits for
        "100 Continue" (`waits_for_continue`) and never got it: it sends no body then.
        """
        if self.complete:
            return True
        if self.broken or (waits_for_continue and not self.started):
            return False
        return await self._discard_rest()

    async def _discard_rest(self) -> bool:
        try:
            while not self.complete:
                await self._next()
        except (RequestTooLarge, RequestTimeout):
            return False
        return True

    def charge(self, size: int) -> None:
        """Charge `size` more bytes to this request (what parsing its body takes) until it is answered.

        Raise RequestTooLarge when the request could never fit in the budget, Overloaded when it does not now.
        """
        if self.charged + size > self._budget.capacity:
            raise RequestTooLarge(
                f"parsing this body may take {self.charged + size} bytes, over MAX_BUFFERED_REQUEST_BYTES="
                f"{self._budget.capacity}: send a smaller body, or percent-encode non-ASCII characters in URLs"
            )
        if not self._budget.take(size):
            raise Overloaded(_BUSY)
        self.charged += size

    def release(self) -> None:
        """Give the bytes charged back to the budget (the request is answered)."""
        self._budget.give(self.charged)
        self.charged = 0

    async def _next(self) -> Message:
        """Return the next message of the body, counted; raise past the size or the deadline."""
        self.started = True
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            self.broken = True
            raise RequestTimeout(
                f"the request body did not arrive within {self._timeout_s:g} s (REQUEST_BODY_TIMEOUT_S): "
                f"{self.received} bytes came"
            ) from None
        if message["type"] != "http.request":
            self.complete = True  # the caller went away: the app sees it
            return message
        self.received += len(message.get("body", b""))
        if self.received > self._max_bytes:
            self.broken = True
            raise RequestTooLarge(f"request body is over {self._max_bytes} bytes")
        if not message.get("more_body", False):
            self.complete = True
        return message
