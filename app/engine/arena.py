"""A worker's shared memory for the payloads it hands the engine processes, and its allocator.

One memfd per worker, mapped by the worker and by every engine process it feeds (the descriptor goes
over the Unix socket once, with the hello). A memfd rather than multiprocessing.shared_memory: it has
no name in /dev/shm (whose 64 MB default in Docker would bound it), nothing to unlink, and it is gone
once the last process holding it exits, a worker killed with SIGKILL included.

The allocator runs on the worker's event loop: first fit over a sorted list of free spans, merged as
they come back, so that the low pages are reused and the memory committed stays near the peak in use.
A request that does not fit waits its turn (first come, first served, so a large image is not starved
by small ones) until its deadline, then gets Overloaded. A region comes back only when the engine that
read it has answered for it, or has died.
"""

from __future__ import annotations

import asyncio
import bisect
import mmap
import os
import time
from collections import deque

import numpy as np

from app.errors import ImageTooLarge, Overloaded

ALIGN = 64  # every region starts on a cache line: float32 and int64 views of it are aligned


def _rounded(size: int) -> int:
    return max(ALIGN, -(-size // ALIGN) * ALIGN)


class Arena:
    """`size` bytes of shared memory and the spans of it in use."""

    def __init__(self, size: int, name: str = "clip-arena") -> None:
        self.size = size - size % ALIGN
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        self._map = mmap.mmap(self.fd, self.size)
        self.bytes = np.frombuffer(self._map, dtype=np.uint8)
        self._free: list[tuple[int, int]] = [(0, self.size)]  # (offset, length), by offset
        self._waiters: deque[tuple[int, asyncio.Future[int]]] = deque()
        self.used = 0

    def try_take(self, size: int) -> int | None:
        """Return the offset of a free region of `size` bytes, or None when none is free (or others wait)."""
        if self._waiters:
            return None
        return self._first_fit(_rounded(size))

    async def take(self, size: int, deadline: float) -> int:
        """Return the offset of a region of `size` bytes, waiting for one until `deadline` (time.monotonic())."""
        rounded = _rounded(size)
        if rounded > self.size:
            raise ImageTooLarge(
                f"the image needs {size / 2**20:.1f} MiB of the engine's shared memory, more than all of it "
                f"(ENGINE_ARENA_MB={self.size >> 20}); raise ENGINE_ARENA_MB"
            )
        offset = self.try_take(size)
        if offset is not None:
            return offset
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiter = (rounded, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await asyncio.shield(future)
        except BaseException as exc:
            if future.done():
                self.give_back(future.result(), size)  # granted just as the wait was given up
            else:
                future.cancel()
                self._waiters.remove(waiter)
                self._wake()  # the next waiter may fit where this one did not
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    "the engine's shared memory stayed full until the request's deadline; retry shortly"
                ) from None
            raise

    def give_back(self, offset: int, size: int) -> None:
        """Free the region at `offset` (of `size` bytes, as taken) and hand room to the waiters, in order."""
        length = _rounded(size)
        self.used -= length
        index = bisect.bisect(self._free, (offset, length))
        start, end = offset, offset + length
        if index < len(self._free) and self._free[index][0] == end:
            end += self._free.pop(index)[1]
        if index > 0 and sum(self._free[index - 1]) == start:
            index -= 1
            start = self._free.pop(index)[0]
        self._free.insert(index, (start, end - start))
        self._wake()

    def write(self, offset: int, data: np.ndarray | bytes) -> None:
        """Copy `data` (bytes, or a C-contiguous array) into the arena at `offset`."""
        flat = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data.reshape(-1).view(np.uint8)
        self.bytes[offset : offset + flat.size] = flat

    def close(self) -> None:
        """Drop this process's descriptor (the mapping lives on until unreferenced; engines keep their own)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _first_fit(self, length: int) -> int | None:
        for index, (offset, free) in enumerate(self._free):
            if free >= length:
                if free == length:
                    del self._free[index]
                else:
                    self._free[index] = (offset + length, free - length)
                self.used += length
                return offset
        return None

    def _wake(self) -> None:
        while self._waiters:
            length, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            offset = self._first_fit(length)
            if offset is None:
                return
            self._waiters.popleft()
            future.set_result(offset)
