"""Workers and an engine process's server over a real Unix socket, on one event loop: the engine's side
(app.engine.server) with a real Engine on the stand-in model, and two workers' sides (app.engine.client)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from app.engine import wire
from app.engine.client import RemoteEngine
from app.engine.server import EngineServer
from app.errors import Overloaded, Unavailable
from app.inference.engine import Engine
from tests.support.fake_model import FakeEmbedder


class Pod:
    """One engine server on `path` and the workers connected to it."""

    def __init__(self, path: Path, model: FakeEmbedder) -> None:
        self.path, self.model = str(path), model
        self.engine: Engine | None = None
        self.server: EngineServer | None = None
        self.workers: list[RemoteEngine] = []

    async def start_engine(self) -> None:
        self.engine = Engine(self.model, max_batch=32, max_wait_ms=0)
        self.engine.start()
        ready = wire.Ready(0, 1, asdict(self.model.info), "clip-tiny", None, "pil", "pool", 32)
        self.server = EngineServer(self.engine, ready, self.model.info.dim)
        await self.server.listen(self.path)

    async def stop_engine(self) -> None:
        assert self.server is not None and self.engine is not None
        self.server.close()
        await self.engine.stop()

    async def worker(self, index: int, arena_bytes: int = 1 << 20) -> RemoteEngine:
        remote = RemoteEngine([self.path], index, arena_bytes)
        self.workers.append(remote)
        await asyncio.wait_for(remote.open(), 10)
        return remote


@pytest.fixture
async def pod(tmp_path: Path) -> AsyncIterator[Pod]:
    made = Pod(tmp_path / "engine-0.sock", FakeEmbedder(gate=threading.Event()))
    await made.start_engine()
    yield made
    made.model.gate.set()
    for remote in made.workers:
        await remote.stop()
    await made.stop_engine()


def image(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((4, 4, 3), dtype=np.float32))


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.005)


async def test_engine_link_batches_two_workers_items_together_and_answers_each_its_own(pod):
    first, second = await pod.worker(0), await pod.worker(1)
    blocker = asyncio.create_task(first.images.submit([image(0)]))
    await until(pod.model.running.is_set, "the first batch on the model")
    requests = [
        asyncio.create_task(w.images.submit([image(10 * i + 1), image(10 * i + 2)]))
        for i, w in enumerate((first, second))
    ]
    await until(lambda: pod.engine.images.depth == 4, "both workers' items queued")
    pod.model.gate.set()
    answers = await asyncio.wait_for(asyncio.gather(blocker, *requests), 10)
    assert pod.model.image_batches == [1, 4]
    # The very vectors of the same model without the processes between.
    local = Engine(FakeEmbedder(), max_batch=32, max_wait_ms=0)
    local.start()
    want = await local.images.submit([image(1), image(2), image(11), image(12)])
    await local.stop()
    got = [v for answer in answers[1:] for v in answer]
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert (first.arena.used, second.arena.used) == (0, 0)


async def test_engine_link_items_in_a_dead_engine_fail_retryably_and_a_new_engine_serves(pod):
    worker = await pod.worker(0)
    held = asyncio.create_task(worker.images.submit([image(0)]))
    await until(pod.model.running.is_set, "a batch on the model")
    await pod.stop_engine()  # its connections close (tests/e2e/test_engine_process.py kills a real one)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(held, 10)
    assert (worker.alive, worker.arena.used) == (False, 0)
    with pytest.raises(Unavailable, match="no engine process"):
        await worker.texts.submit([torch.zeros(8)])
    pod.model.gate.set()
    await pod.start_engine()
    await until(lambda: worker.alive, "the worker connected to the new engine")
    (vector,) = await asyncio.wait_for(worker.texts.submit([torch.zeros(8)]), 10)
    assert vector.shape == (pod.model.info.dim,)


async def test_engine_link_caller_gone_drops_its_queued_item_and_frees_its_region_once_answered(pod):
    worker = await pod.worker(0)
    blocker = asyncio.create_task(worker.images.submit([image(0)]))
    await until(pod.model.running.is_set, "a batch on the model")
    gone = asyncio.create_task(worker.images.submit([image(1)]))
    await until(lambda: pod.engine.images.depth == 1, "the second item queued")
    gone.cancel()
    await asyncio.sleep(0.05)
    assert worker.arena.used > 0  # the engine may still read it: not free before it answers
    pod.model.gate.set()
    await asyncio.wait_for(blocker, 10)
    await until(lambda: worker.arena.used == 0, "the region back")
    assert pod.model.image_batches == [1]  # the cancelled item never reached the model


async def test_engine_link_full_arena_waits_until_the_deadline_then_overloaded(pod):
    worker = await pod.worker(0, arena_bytes=4096)
    big = torch.zeros(1000)  # 4000 bytes: the whole arena
    held = asyncio.create_task(worker.texts.submit([big]))
    await until(pod.model.running.is_set, "the first item on the model")
    with pytest.raises(Overloaded, match="shared memory"):
        await worker.texts.submit([big], deadline=time.monotonic() + 0.1)
    pod.model.gate.set()
    await asyncio.wait_for(held, 10)
    (vector,) = await asyncio.wait_for(worker.texts.submit([big], deadline=math.inf), 10)
    assert vector.shape == (pod.model.info.dim,)


async def test_engine_link_refuses_items_once_the_engine_drains(pod):
    worker = await pod.worker(0)
    pod.server.stop_taking()
    with pytest.raises(Unavailable, match="stopping"):
        await asyncio.wait_for(worker.texts.submit([torch.zeros(8)]), 10)
    assert worker.arena.used == 0
