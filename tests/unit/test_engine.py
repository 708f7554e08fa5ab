"""The batching engine without HTTP: a stand-in model, and a clock that moves only when the test moves it.

With the clock standing still, a batch the rules hold back waits for ever, so every test decides when time
passes: what a test proves does not depend on how fast the machine runs it. The rules' exact times are in
test_batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from app.errors import Overloaded, Unavailable
from app.inference.engine import BatchQueue, Engine
from tests.support.fake_model import FakeEmbedder

IMAGE = torch.zeros(4, 4, 3)
TEXT = torch.zeros(8)


class ManualClock:
    """A clock that stands still until the test moves it; it counts how often it is read."""

    def __init__(self) -> None:
        self.now = 100.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class PricedModel(FakeEmbedder):
    """A stand-in whose every forward pass takes `cost` seconds of the manual clock, and no real time."""

    def __init__(self, clock: ManualClock, cost: float = 0.0, gate: threading.Event | None = None) -> None:
        super().__init__(gate=gate)
        self.clock, self.cost = clock, cost

    def _run(self, rows: list[torch.Tensor], record: list[int]) -> np.ndarray:
        vectors = super()._run(rows, record)
        self.clock.advance(self.cost)
        return vectors


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the event loop run until `condition` holds."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.001)


async def submitted(queue: BatchQueue, count: int = 1, caller: object | None = None) -> list[asyncio.Task]:
    """Start `count` one-text requests (one caller each, unless `caller`); return once the engine took them."""
    tasks = [asyncio.create_task(queue.submit([TEXT], caller=caller)) for _ in range(count)]
    await asyncio.sleep(0)  # each task queues its item in its first step
    await until(lambda: queue.depth == 0, "the engine took the items")
    return tasks


async def tick(clock: ManualClock, seconds: float, *answered: asyncio.Task) -> None:
    """Move the clock on; return once the engine has looked at it, or the `answered` requests are answered.

    A waiting gather reads the clock on its own (the loop's timer wakes it); an idle engine does not.
    """
    reads = clock.reads
    clock.advance(seconds)
    await until(lambda: clock.reads > reads or bool(answered) and all(t.done() for t in answered), "a clock read")


async def done(*tasks: asyncio.Task) -> list:
    return await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def tick_through(clock: ManualClock, tasks: list[asyncio.Task]) -> None:
    """Move the clock past any window, and wait for the requests to be answered."""
    await tick(clock, 10.0)
    await done(*tasks)


async def test_engine_batches_concurrent_submissions_and_returns_each_its_own():
    clock = ManualClock()
    model = FakeEmbedder()
    engine = Engine(model, max_batch=64, max_wait_ms=50, clock=clock)
    engine.start()
    try:
        payloads = [torch.full((4, 4, 3), float(i)) for i in range(20)]
        tasks = [asyncio.create_task(engine.images.submit([p])) for p in payloads]
        await asyncio.sleep(0)
        await until(lambda: engine.images.depth == 0, "the engine took the items")
        await tick(clock, 1.0)
        results = await done(*tasks)
    finally:
        await engine.stop()
    for payload, (vector,) in zip(payloads, results, strict=True):
        np.testing.assert_allclose(vector, model._run([payload], [])[0])
    assert model.image_batches == [20]


async def test_engine_sends_a_full_batch_at_once_and_never_a_larger_one():
    clock = ManualClock()
    model = FakeEmbedder()
    engine = Engine(model, max_batch=4, max_wait_ms=50, clock=clock)
    engine.start()
    try:
        tasks = [asyncio.create_task(engine.images.submit([IMAGE] * 3)) for _ in range(5)]
        # The clock stands still, so only full batches go: they hold the first four requests' twelve items.
        await done(*tasks[:4])
        await until(lambda: engine.images.depth == 0, "the engine took the last three items")
        last_waits = not tasks[4].done()
        await tick(clock, 1.0)
        await done(tasks[4])
    finally:
        await engine.stop()
    assert last_waits
    assert model.image_batches == [4, 4, 4, 3]


async def test_engine_sends_items_queued_during_a_forward_pass_as_the_next_batch():
    gate = threading.Event()
    model = FakeEmbedder(gate=gate)
    engine = Engine(model, max_batch=64, max_wait_ms=0)
    engine.start()
    try:
        first = asyncio.create_task(engine.images.submit([IMAGE]))
        await asyncio.to_thread(model.running.wait, 10)
        rest = [asyncio.create_task(engine.images.submit([torch.ones(4, 4, 3)])) for _ in range(10)]
        await until(lambda: engine.images.depth == 10, "ten items queued behind the running batch")
        gate.set()
        await done(first, *rest)
    finally:
        gate.set()
        await engine.stop()
    assert model.image_batches == [1, 10]


async def test_engine_model_error_fails_only_that_batch():
    class Broken(FakeEmbedder):
        def encode_texts(self, tokens):
            raise RuntimeError("boom")

    model = Broken()
    engine = Engine(model, max_batch=8, max_wait_ms=0)
    engine.start()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            await engine.texts.submit([TEXT])
        (vector,) = await engine.images.submit([IMAGE])
    finally:
        await engine.stop()
    assert vector.shape == (8,)
    assert engine.alive is False


async def test_engine_refuses_work_when_stopped():
    engine = Engine(FakeEmbedder(), max_batch=8, max_wait_ms=0)
    with pytest.raises(Unavailable):
        await engine.images.submit([IMAGE])


async def test_engine_keeps_time_on_its_clock():
    clock = ManualClock()
    reports: list[tuple[str, object]] = []

    class Observer:
        def dispatched(self, queue: str, waits_s: list[float]) -> None:
            reports.append(("dispatched", waits_s))

        def dropped(self, queue: str, reason: str, count: int) -> None:
            reports.append((reason, count))

    engine = Engine(FakeEmbedder(), max_batch=64, max_wait_ms=50, observer=Observer(), clock=clock)
    engine.start()
    try:
        late = asyncio.create_task(engine.texts.submit([TEXT], deadline=clock.now + 0.125))
        (on_time,) = await submitted(engine.texts)
        await tick(clock, 0.25)
        ((vector,),) = await done(on_time)
        with pytest.raises(Overloaded):
            await done(late)
    finally:
        await engine.stop()
    # Queued for 0.25 s of the clock: one item past its deadline is dropped, the other waited exactly that long.
    assert reports == [("deadline", 1), ("dispatched", [0.25])]
    assert vector.shape == (8,)
    assert engine.texts.stats.batches == 1


async def test_engine_re_arms_the_quiet_window_at_each_arrival():
    clock = ManualClock()
    model = FakeEmbedder()
    engine = Engine(model, max_batch=64, max_wait_ms=50, clock=clock)  # a 0.4 s cap
    engine.start()
    try:
        tasks = []
        for _ in range(5):
            tasks += await submitted(engine.texts)
            await tick(clock, 0.03)  # each gap is within the window; their sum (0.15 s) is not
        held = model.text_batches == []
        await tick(clock, 0.05)
        await done(*tasks)
    finally:
        await engine.stop()
    assert held
    assert model.text_batches == [5]


@pytest.mark.parametrize(("wave", "batches"), [(3, [3, 3, 1]), (4, [4, 4])], ids=["wave-complete", "wave-short"])
async def test_engine_dispatches_once_a_recent_wave_is_complete(wave, batches):
    clock = ManualClock()
    model = FakeEmbedder()
    engine = Engine(model, max_batch=64, max_wait_ms=50, clock=clock)
    engine.start()
    try:
        previous = await submitted(engine.texts, wave)
        await tick(clock, 1.0)
        await done(*previous)
        # The next wave: three at once, then one more. With the clock standing still, nothing waits out a
        # window: three matching the last wave go at once and the fourth runs alone; three short of it wait.
        first = await submitted(engine.texts, 3)
        fourth = await submitted(engine.texts)
        if wave == 3:
            await done(*first)
            await tick(clock, 1.0)
        await done(*first, *fourth)
    finally:
        await engine.stop()
    assert model.text_batches == batches


async def test_engine_merges_a_client_that_joined_during_a_forward_pass_with_the_one_answered():
    clock = ManualClock()
    gate = threading.Event()
    model = PricedModel(clock, cost=1.0, gate=gate)
    engine = Engine(model, max_batch=64, max_wait_ms=50, clock=clock)
    engine.start()

    async def client(requests: int) -> None:
        for _ in range(requests):
            await engine.texts.submit([TEXT])

    try:
        first = asyncio.create_task(client(3))
        await asyncio.sleep(0)
        await until(lambda: engine.texts.depth == 0, "the first client's request was taken")
        await tick(clock, 1.0)
        await asyncio.to_thread(model.running.wait, 10)
        second = asyncio.create_task(client(2))  # arrives while the first client's batch runs
        await asyncio.sleep(0)
        await until(lambda: engine.texts.depth == 1, "the second client's request queued")
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
    finally:
        gate.set()
        await engine.stop()
    # Not [1, 1, ...]: the item queued during the pass waits for the answered client to return.
    assert model.text_batches == [1, 2, 2]


@pytest.mark.parametrize(("cost", "batches"), [(0.4, [4, 4]), (0.0, [4, 2, 2])], ids=["slow-model", "free-model"])
async def test_engine_waits_past_the_quiet_window_for_the_rest_of_a_recent_wave(cost, batches):
    clock = ManualClock()
    model = PricedModel(clock, cost)
    engine = Engine(model, max_batch=64, max_wait_ms=20, clock=clock)  # a 0.16 s cap
    engine.start()
    try:
        wave = await submitted(engine.texts, 4)
        await tick(clock, 1.0)
        await done(*wave)
        # Half of the next wave, then the other half 0.0625 s later: past the 0.02 s quiet window, within the
        # cap and half a forward pass of the slow model (0.2 s), beyond half of the free one's.
        first = await submitted(engine.texts, 2)
        await tick(clock, 0.0625)
        second = await submitted(engine.texts, 2)
        clock.advance(1.0)  # whatever still waits goes
        await done(*first, *second)
    finally:
        await engine.stop()
    assert model.text_batches == batches


@pytest.mark.parametrize(
    ("one_request", "batches"), [(True, [4, 1, 1]), (False, [4, 2])], ids=["four-items-one-request", "four-clients"]
)
async def test_engine_counts_a_wave_in_callers_not_items(one_request, batches):
    clock = ManualClock()
    model = PricedModel(clock, cost=0.4)
    engine = Engine(model, max_batch=64, max_wait_ms=20, clock=clock)  # a 0.16 s cap
    engine.start()
    try:
        wave = await submitted(engine.texts, 4, caller=object() if one_request else None)
        await tick(clock, 1.0)
        await done(*wave)
        # A lone request, then another 0.0625 s later: past the quiet window, within the cap and half a
        # forward pass (0.2 s). After one request of four items, a lone one is a complete wave and goes at
        # once; after four clients, it waits for the others, and the next one joins it.
        first = await submitted(engine.texts)
        await tick(clock, 0.0625, *first)
        second = await submitted(engine.texts)
        clock.advance(1.0)  # whatever still waits goes
        await done(*first, *second)
    finally:
        await engine.stop()
    assert model.text_batches == batches


@pytest.mark.parametrize(("announced", "batches"), [(True, [3]), (False, [1, 2])])
async def test_engine_waits_past_the_cap_for_items_announced_as_being_prepared(announced, batches):
    clock = ManualClock()
    model = PricedModel(clock, cost=0.4)
    engine = Engine(model, max_batch=64, max_wait_ms=2, clock=clock)  # a 0.016 s cap without announcements
    engine.start()
    ready = asyncio.Event()

    async def prepared_late() -> None:
        with engine.texts.expecting(1) if announced else contextlib.nullcontext():
            await ready.wait()
        await engine.texts.submit([torch.ones(8)])

    try:
        await tick_through(clock, await submitted(engine.texts))  # one forward pass, so the engine knows its cost
        late = [asyncio.create_task(prepared_late()) for _ in range(2)]
        await asyncio.sleep(0)  # the announcements come first, as the pipeline makes them
        queued = await submitted(engine.texts)
        await tick(clock, 0.1, *queued)  # past the cap, within half a forward pass (0.2 s)
        ready.set()
        await done(*queued, *late)
    finally:
        await engine.stop()
    assert model.text_batches[1:] == batches


async def test_engine_stops_waiting_for_announced_items_after_half_a_forward_pass():
    clock = ManualClock()
    model = PricedModel(clock, cost=1.0)
    engine = Engine(model, max_batch=64, max_wait_ms=10, clock=clock)  # a 0.08 s cap without announcements
    engine.start()
    never = asyncio.Event()

    async def announced_never_ready() -> None:
        with engine.texts.expecting(1):
            await never.wait()

    try:
        await tick_through(clock, await submitted(engine.texts))
        stuck = asyncio.create_task(announced_never_ready())
        await asyncio.sleep(0)
        queued = await submitted(engine.texts)
        await tick(clock, 0.25)  # past the cap, within half a forward pass (0.5 s): still waiting, so it joins
        joined = await submitted(engine.texts)
        await tick(clock, 0.5)  # half a forward pass since the gather began: the batch goes without the announced
        await done(*queued, *joined)
    finally:
        never.set()
        await engine.stop()
    await stuck
    assert model.text_batches[1:] == [2]


class _Gated:
    """A started batch whose rows come back when the test opens its gate."""

    def __init__(self, rows: np.ndarray, gate: threading.Event) -> None:
        self.rows, self.gate = rows, gate
        self.waited_on: str | None = None

    def wait(self) -> np.ndarray:
        self.waited_on = threading.current_thread().name
        assert self.gate.wait(10)
        return self.rows


class StartingModel(FakeEmbedder):
    """A stand-in that starts image batches and returns at once, as a GPU model does (ENGINE_OVERLAP)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[_Gated] = []

    def start_images(self, pixels: list[torch.Tensor]) -> _Gated:
        self.pending.append(_Gated(self._run(pixels, self.image_batches), threading.Event()))
        return self.pending[-1]


async def test_engine_overlap_starts_the_next_batch_while_one_is_on_the_device_and_no_more():
    model = StartingModel()
    engine = Engine(model, max_batch=8, max_wait_ms=0, overlap=True)
    engine.start()
    try:
        first = asyncio.create_task(engine.images.submit([torch.full((4, 4, 3), 1.0)]))
        await until(lambda: len(model.pending) == 1, "the first batch started")
        second = asyncio.create_task(engine.images.submit([torch.full((4, 4, 3), 2.0)]))
        await until(lambda: len(model.pending) == 2, "the second batch started while the first runs")
        third = asyncio.create_task(engine.images.submit([torch.full((4, 4, 3), 3.0)]))
        await until(lambda: engine.images.depth == 0, "the engine took the third item")
        await asyncio.sleep(0.05)  # room for a wrong third start
        assert len(model.pending) == 2 and not first.done()
        model.pending[0].gate.set()
        ((one,),) = await done(first)
        await until(lambda: len(model.pending) == 3, "the third batch started once the first was delivered")
        for started in model.pending[1:]:
            started.gate.set()
        ((two,), (three,)) = await done(second, third)
    finally:
        for started in model.pending:
            started.gate.set()
        await engine.stop()
    expected = [FakeEmbedder()._run([torch.full((4, 4, 3), v)], [])[0] for v in (1.0, 2.0, 3.0)]
    np.testing.assert_array_equal(np.stack([one, two, three]), np.stack(expected))
    assert {p.waited_on for p in model.pending} == {"readback_0"}
    assert engine.images.stats.batches == 3


async def test_engine_stop_delivers_a_batch_already_on_the_device():
    model = StartingModel()
    engine = Engine(model, max_batch=8, max_wait_ms=0, overlap=True)
    engine.start()
    request = asyncio.create_task(engine.images.submit([IMAGE]))
    await until(lambda: len(model.pending) == 1, "the batch started")
    stopping = asyncio.create_task(engine.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # it waits for the batch on the device
    model.pending[0].gate.set()
    await done(stopping)
    ((vector,),) = await done(request)
    assert vector.shape == (8,)


async def test_engine_without_overlap_runs_a_starting_model_batch_by_batch():
    model = StartingModel()
    engine = Engine(model, max_batch=8, max_wait_ms=0)
    engine.start()
    try:
        ((vector,),) = await done(asyncio.create_task(engine.images.submit([IMAGE])))
    finally:
        await engine.stop()
    assert model.pending == [] and model.image_batches == [1] and vector.shape == (8,)


async def test_engine_abandoned_ticket_is_dropped_unrun_and_answered_once_dropped():
    clock = ManualClock()
    model = FakeEmbedder()
    dropped: list[tuple[str, int]] = []

    class Observer:
        def dispatched(self, queue: str, waits_s: list[float]) -> None:
            pass

        def dropped(self, queue: str, reason: str, count: int) -> None:
            dropped.append((reason, count))

    engine = Engine(model, max_batch=64, max_wait_ms=50, observer=Observer(), clock=clock)
    engine.start()
    try:
        kept, given_up = engine.texts.enqueue([TEXT, TEXT])
        await until(lambda: engine.texts.depth == 0, "the gather took both")
        given_up.abandon()
        assert not given_up.future.done()  # answered only once the queue lets go of its payload
        await tick(clock, 1.0)
        (vector,) = await done(kept.future)
        with pytest.raises(Unavailable, match="given up"):
            await done(given_up.future)
    finally:
        await engine.stop()
    assert (model.text_batches, dropped, vector.shape) == ([1], [("cancelled", 1)], (8,))


async def test_engine_stop_fails_the_items_of_a_batch_still_being_gathered():
    clock = ManualClock()
    engine = Engine(FakeEmbedder(), max_batch=64, max_wait_ms=50, clock=clock)
    engine.start()
    (request,) = await submitted(engine.texts)  # the gather holds it, waiting out the quiet window
    await engine.stop()
    with pytest.raises(Unavailable, match="shutting down"):
        await done(request)


async def test_engine_counts_items_announced_from_outside_as_its_own():
    clock = ManualClock()
    model = FakeEmbedder()
    engine = Engine(model, max_batch=64, max_wait_ms=50, clock=clock)
    engine.start()
    try:
        engine.images.adjust_incoming(1)  # an engine process's worker announces one image
        (first,) = await submitted(engine.images, caller="a")
        await tick(clock, 0.06)  # past the quiet window: only the announcement holds the batch
        assert not first.done()
        engine.images.adjust_incoming(-1)
        second = asyncio.create_task(engine.images.submit([IMAGE], caller="a"))
        await tick_through(clock, [first, second])
    finally:
        await engine.stop()
    assert model.image_batches == [2]
