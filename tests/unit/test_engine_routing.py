"""One pod uses every GPU it has: one engine process per device, and the workers' items spread over them.

The engines are real engine servers (app.engine.server, a real Engine on the stand-in model) on real Unix
sockets, one per "GPU"; the workers are real RemoteEngines. Which GPUs a host has is the only input faked:
`devices_for` takes the count that `engine_devices` probes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from app.engine import wire
from app.engine.client import SPILL_BATCHES, RemoteEngine
from app.engine.server import EngineServer
from app.engine.supervise import devices_for, engine_devices
from app.inference.engine import Engine
from tests.support.fake_model import FakeEmbedder

MAX_BATCH = 2


class Gpus:
    """Engine servers, one per socket, each on its own gated stand-in model; and the workers fed to them."""

    def __init__(self, folder: Path, count: int) -> None:
        self.paths = [str(folder / f"engine-{i}.sock") for i in range(count)]
        self.models = [FakeEmbedder(gate=threading.Event()) for _ in range(count)]
        self.engines: list[Engine | None] = [None] * count
        self.servers: list[EngineServer | None] = [None] * count
        self.workers: list[RemoteEngine] = []

    async def start(self, index: int) -> None:
        model = self.models[index]
        engine = Engine(model, max_batch=MAX_BATCH, max_wait_ms=0)
        engine.start()
        ready = wire.Ready(index, 1, asdict(model.info), "clip-tiny", None, "pil", "pool", MAX_BATCH)
        server = EngineServer(engine, ready, model.info.dim)
        await server.listen(self.paths[index])
        self.engines[index], self.servers[index] = engine, server

    async def stop(self, index: int) -> None:
        server, engine = self.servers[index], self.engines[index]
        assert server is not None and engine is not None
        self.models[index].gate.set()
        server.close()
        await engine.stop()
        self.servers[index] = self.engines[index] = None

    async def worker(self, index: int) -> RemoteEngine:
        remote = RemoteEngine(self.paths, index, 1 << 20)
        self.workers.append(remote)
        await asyncio.wait_for(remote.open(), 10)
        return remote

    def texts_run(self) -> list[int]:
        """Return how many texts each engine's model embedded."""
        return [sum(model.text_batches) for model in self.models]


@pytest.fixture
async def gpus(tmp_path: Path) -> AsyncIterator[Gpus]:
    made = Gpus(tmp_path, 2)
    for index in range(2):
        await made.start(index)
    yield made
    for model in made.models:
        model.gate.set()
    for remote in made.workers:
        await remote.stop()
    for index, server in enumerate(made.servers):
        if server is not None:
            await made.stop(index)


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.005)


def text(seed: int) -> torch.Tensor:
    return torch.full((8,), float(seed))


@pytest.mark.parametrize(
    ("device", "gpus", "expected"),
    [
        ("auto", 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        ("cuda", 2, ["cuda:0", "cuda:1"]),
        ("auto", 1, ["cuda:0"]),
        ("auto", 0, ["auto"]),
        ("cuda", 0, ["cuda"]),
        ("cpu", 4, ["cpu"]),
        ("cuda:1", 4, ["cuda:1"]),
    ],
)
def test_engine_devices_are_one_per_visible_gpu_unless_one_device_is_named(device, gpus, expected):
    assert devices_for(device, gpus) == expected


def test_engine_devices_on_a_host_without_gpus_is_the_device_asked_for():
    # The real probe (a fresh interpreter importing torch) on this CPU-only machine: no GPU to spread over.
    assert (engine_devices("auto"), engine_devices("cpu")) == (["auto"], ["cpu"])


async def test_engine_routing_sends_worker_i_to_engine_i_mod_the_engines(gpus):
    for gpu in gpus.models:
        gpu.gate.set()
    workers = [await gpus.worker(i) for i in range(3)]
    for seed, remote in enumerate(workers):
        await asyncio.wait_for(remote.texts.submit([text(seed)]), 10)
    # Workers 0 and 2 on engine 0, worker 1 on engine 1: both GPUs busy with three workers.
    assert gpus.texts_run() == [2, 1]


async def test_engine_routing_goes_to_another_engine_while_the_home_one_is_down(gpus):
    gpus.models[1].gate.set()
    worker = await gpus.worker(0)
    await gpus.stop(0)
    await until(lambda: not worker.complete, "the worker saw engine 0 go")
    (vector,) = await asyncio.wait_for(worker.texts.submit([text(1)]), 10)
    assert (vector.shape, gpus.texts_run()) == ((gpus.models[1].info.dim,), [0, 1])


async def test_engine_routing_spills_to_the_least_loaded_engine_once_home_holds_two_batches(gpus):
    gpus.models[1].gate.set()
    worker = await gpus.worker(0)
    spill = SPILL_BATCHES * MAX_BATCH
    held = [asyncio.create_task(worker.texts.submit([text(i)])) for i in range(spill)]
    await until(gpus.models[0].running.is_set, "engine 0's first batch on its model, the rest queued")
    vectors = await asyncio.wait_for(worker.texts.submit([text(99)]), 10)
    spilled = gpus.texts_run()
    gpus.models[0].gate.set()
    await asyncio.wait_for(asyncio.gather(*held), 10)
    # The item past the spill went to engine 1 at once, while engine 0 still held its batches.
    assert (len(vectors), spilled, gpus.texts_run()) == (1, [0, 1], [spill, 1])
