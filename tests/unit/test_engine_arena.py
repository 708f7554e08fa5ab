"""A worker's shared memory for the engine processes: first fit, merging, waiting in turn, and its bounds."""

from __future__ import annotations

import asyncio
import mmap
import time

import numpy as np
import pytest

from app.engine.arena import ALIGN, Arena
from app.errors import ImageTooLarge, Overloaded

SIZE = 16 * ALIGN


@pytest.fixture
def arena():
    made = Arena(SIZE)
    yield made
    made.close()


def test_arena_takes_first_fit_rounded_to_cache_lines(arena):
    assert [arena.try_take(n) for n in (1, ALIGN, ALIGN + 1)] == [0, ALIGN, 2 * ALIGN]
    assert arena.used == 4 * ALIGN


def test_arena_merges_freed_neighbours_so_a_large_region_fits_again(arena):
    offsets = [arena.try_take(4 * ALIGN) for _ in range(4)]
    assert arena.try_take(ALIGN) is None
    for offset in (offsets[1], offsets[3], offsets[2]):  # the middle last: it joins both sides
        arena.give_back(offset, 4 * ALIGN)
    assert (arena.try_take(12 * ALIGN), arena.used) == (4 * ALIGN, 16 * ALIGN)


def test_arena_reuses_the_lowest_room_first(arena):
    first, second = arena.try_take(ALIGN), arena.try_take(ALIGN)
    arena.give_back(first, ALIGN)
    assert (arena.try_take(ALIGN), second) == (0, ALIGN)


async def test_arena_waiter_gets_room_when_it_comes_back_in_turn(arena):
    whole = arena.try_take(SIZE)
    big = asyncio.create_task(arena.take(8 * ALIGN, time.monotonic() + 10))
    small = asyncio.create_task(arena.take(ALIGN, time.monotonic() + 10))
    await asyncio.sleep(0.01)
    assert arena.try_take(ALIGN) is None  # no overtaking the waiters
    arena.give_back(whole, SIZE)
    assert await asyncio.wait_for(asyncio.gather(big, small), 5) == [0, 8 * ALIGN]


async def test_arena_full_until_the_deadline_is_overloaded_and_lets_the_next_waiter_in(arena):
    arena.try_take(12 * ALIGN)
    stuck = asyncio.create_task(arena.take(8 * ALIGN, time.monotonic() + 0.05))
    behind = asyncio.create_task(arena.take(4 * ALIGN, time.monotonic() + 10))
    with pytest.raises(Overloaded, match="shared memory stayed full"):
        await asyncio.wait_for(stuck, 5)
    assert await asyncio.wait_for(behind, 5) == 12 * ALIGN


async def test_arena_waiter_that_goes_away_holds_no_room(arena):
    whole = arena.try_take(SIZE)
    waiter = asyncio.create_task(arena.take(SIZE, time.monotonic() + 10))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    arena.give_back(whole, SIZE)
    assert (arena.used, arena.try_take(SIZE)) == (0, 0)


async def test_arena_refuses_an_item_larger_than_all_of_it(arena):
    with pytest.raises(ImageTooLarge, match="ENGINE_ARENA_MB"):
        await arena.take(SIZE + 1, time.monotonic() + 10)


def test_arena_bytes_are_seen_by_another_mapping_of_its_descriptor(arena):
    arena.write(ALIGN, np.arange(10, dtype=np.float32))
    other = np.frombuffer(mmap.mmap(arena.fd, arena.size), dtype=np.uint8)
    assert other[ALIGN : ALIGN + 40].view(np.float32).tolist() == list(range(10))
