"""The shared-store watcher logs every change of reachability, whoever noticed it first, and ends on its event."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

from app.state import shared


class _Store:
    """Answers each ping with what the test puts in `answers`, when it puts it."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[bool] = asyncio.Queue()
        self.pings = 0

    async def ping(self) -> bool:
        answer = await self.answers.get()
        self.pings += 1
        return answer


async def _answer(store: _Store, up: bool) -> None:
    done = store.pings + 1
    await store.answers.put(up)
    while store.pings < done:
        await asyncio.sleep(0)
    for _ in range(3):
        await asyncio.sleep(0)  # let the watcher log and record it


@dataclass
class _Services:
    state: _Store
    state_up: bool = True


async def test_watch_shared_state_logs_changes_even_when_health_saw_them_first(monkeypatch, caplog):
    monkeypatch.setattr(shared, "WATCH_EVERY_S", 0)
    store = _Store()
    services = _Services(store)
    caplog.set_level(logging.INFO, logger="app.state")
    watcher = asyncio.create_task(shared.watch_shared_state(services, asyncio.Event()))  # type: ignore[arg-type]
    await _answer(store, True)
    services.state_up = False  # /health pinged first and recorded the outage
    await _answer(store, False)
    await _answer(store, False)
    services.state_up = True  # /health saw it come back first too
    await _answer(store, True)
    await _answer(store, True)
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "the shared store (STATE_URL) is unreachable: signed requests with a nonce get 503",
        "the shared store (STATE_URL) answers again",
    ]
    assert services.state_up is True


class _SwallowingStore:
    """Answers every ping, and swallows a cancellation that comes during one, as redis-py's waits can on 3.11."""

    def __init__(self) -> None:
        self.pings = 0
        self.swallowed = 0

    async def ping(self) -> bool:
        self.pings += 1
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.swallowed += 1
        return True


async def test_watch_shared_state_ends_on_its_event_when_a_ping_swallows_the_cancellation(monkeypatch):
    monkeypatch.setattr(shared, "WATCH_EVERY_S", 0)
    store = _SwallowingStore()
    stop = asyncio.Event()
    watcher = asyncio.create_task(shared.watch_shared_state(_Services(store), stop))  # type: ignore[arg-type]
    while store.pings < 3:
        await asyncio.sleep(0)
    stop.set()
    watcher.cancel()  # lands in a ping, which swallows it: only the event can end the loop
    done, _ = await asyncio.wait([watcher], timeout=5)
    assert (done, store.swallowed) == ({watcher}, 1)
