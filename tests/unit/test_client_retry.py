"""Retries, backoff and timeouts, against small local stubs that fail on purpose."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from aiohttp import web
from clip_client import ClipPodClient, ClipServerError, ClipTimeoutError, ClipUnavailableError, RetryPolicy
from clip_client.retry import parse_retry_after
from clip_client.signing import IMAGE_PATH, canonical_message, image_payload_id, sign

from scripts.procs import free_port
from tests.support.stubs import Sleeps, silent_server, stub_server

SECRET = "stub-secret"
URL = "http://images.example/cat.jpg"
OK_BODY = {"embedding": [0.6, 0.8], "dim": 2, "model": "stub"}


class Counter:
    """A clock that moves one second per reading."""

    def __init__(self, start: int = 1_700_000_000) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1
        return float(self.now)


@pytest.mark.parametrize(
    ("attempt", "rand", "retry_after", "expected"),
    [
        (1, 1.0, None, 0.5),
        (2, 1.0, None, 1.0),
        (3, 1.0, None, 2.0),
        (5, 1.0, None, 8.0),
        (9, 1.0, None, 8.0),
        (3, 0.25, None, 0.5),
        (1, 0.0, 3.0, 3.0),
        (4, 1.0, 2.0, 4.0),
        (1, 0.5, 600.0, 60.0),
    ],
)
def test_retry_delay_is_capped_full_jitter_with_retry_after_floor(attempt, rand, retry_after, expected):
    policy = RetryPolicy(random=lambda: rand)
    assert policy.delay(attempt, retry_after) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("7", 7.0), ("soon", None), ("Tue, 01 Dec 2026 10:00:30 GMT", 30.0)],
)
def test_retry_after_parses_seconds_and_dates(header, expected):
    now = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now) == expected


async def test_client_retries_503_honouring_retry_after_with_fresh_signatures():
    seen: list[dict[str, str]] = []
    answers = [
        web.json_response({"error": {"code": "overloaded", "message": "busy"}}, status=503),
        web.json_response(
            {"error": {"code": "overloaded", "message": "busy"}}, status=503, headers={"Retry-After": "1"}
        ),
        web.json_response(OK_BODY),
    ]

    async def embed(request: web.Request) -> web.Response:
        seen.append({k: request.headers.get(k, "") for k in ("X-Timestamp", "X-Signature", "X-Nonce")})
        assert json.loads(await request.read()) == {"image_url": URL}
        return answers[len(seen) - 1]

    sleeps = Sleeps()
    async with (
        stub_server({("POST", IMAGE_PATH): embed}) as base,
        ClipPodClient(base, SECRET, retry=RetryPolicy(sleep=sleeps, random=lambda: 0.5), clock=Counter()) as client,
    ):
        vector = await client.embed_image(URL)
    assert vector == OK_BODY["embedding"]
    assert len(seen) == 3
    assert sleeps.delays == [0.25, 1.0]  # 0.5*0.5, then max(1.0*0.5, Retry-After 1)
    assert len({h["X-Timestamp"] for h in seen}) == 3
    assert len({h["X-Signature"] for h in seen}) == 3
    assert len({h["X-Nonce"] for h in seen}) == 3
    for h in seen:
        message = canonical_message("POST", IMAGE_PATH, image_payload_id(URL), h["X-Timestamp"], h["X-Nonce"])
        assert h["X-Signature"] == sign(SECRET, message)


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
async def test_client_gives_up_after_attempts_on_retryable_status(status):
    calls: list[int] = []

    async def embed(_: web.Request) -> web.Response:
        calls.append(status)
        return web.Response(status=status, text="<html>gateway</html>")

    sleeps = Sleeps()
    async with (
        stub_server({("POST", IMAGE_PATH): embed}) as base,
        ClipPodClient(base, SECRET, retry=RetryPolicy(sleep=sleeps, random=lambda: 1.0)) as client,
    ):
        with pytest.raises(ClipUnavailableError) as caught:
            await client.embed_image(URL)
    assert type(caught.value) is ClipUnavailableError
    assert caught.value.attempts == 4 and caught.value.status == status and len(calls) == 4
    assert sleeps.delays == [0.5, 1.0, 2.0]


async def test_client_500_is_not_retried():
    calls: list[int] = []

    async def embed(_: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"error": {"code": "internal_error", "message": "boom"}}, status=500)

    sleeps = Sleeps()
    async with (
        stub_server({("POST", IMAGE_PATH): embed}) as base,
        ClipPodClient(base, SECRET, retry=RetryPolicy(sleep=sleeps)) as client,
    ):
        with pytest.raises(ClipServerError) as caught:
            await client.embed_image(URL)
    assert caught.value.status == 500 and caught.value.code == "internal_error"
    assert len(calls) == 1 and sleeps.delays == []


async def test_client_times_out_on_server_that_never_answers():
    sleeps = Sleeps()
    async with silent_server() as (base, connections):
        policy = RetryPolicy(attempts=2, sleep=sleeps, random=lambda: 1.0)
        async with ClipPodClient(base, SECRET, timeout_s=0.3, retry=policy) as client:
            with pytest.raises(ClipTimeoutError) as caught:
                await client.embed_image(URL)
    assert caught.value.attempts == 2 and caught.value.code == "timeout"
    assert "no answer within 0.3s" in caught.value.message
    assert len(connections) == 2 and sleeps.delays == [0.5]


async def test_client_connection_refused_is_retried_then_unavailable():
    sleeps = Sleeps()
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with ClipPodClient(base, SECRET, retry=RetryPolicy(sleep=sleeps, random=lambda: 1.0)) as client:
        with pytest.raises(ClipUnavailableError) as caught:
            await client.health()
    assert type(caught.value) is ClipUnavailableError and caught.value.attempts == 4
    assert "connection failed" in caught.value.message and sleeps.delays == [0.5, 1.0, 2.0]
