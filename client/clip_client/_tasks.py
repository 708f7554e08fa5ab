"""Run coroutines concurrently with a bound, in order, cancelling the rest when one raises."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def bounded_map(func: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int) -> list[R]:
    """Return `[await func(x) for x in items]`, at most `limit` running at once."""
    slots = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with slots:
            return await func(item)

    return await gather_or_cancel([asyncio.ensure_future(one(item)) for item in items])


async def drain(func: Callable[[T], Awaitable[object]], items: Iterable[T], workers: int) -> None:
    """Call `func` on every item, in order, with `workers` calls at most at once (no task per item)."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:  # one iterator shared: each item goes to the first free worker
            await func(item)

    await gather_or_cancel([asyncio.ensure_future(worker()) for _ in range(workers)])


async def gather_or_cancel(tasks: list[asyncio.Future[R]]) -> list[R]:
    """Return the tasks' results; when one raises (or this is cancelled), cancel the others and re-raise."""
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
