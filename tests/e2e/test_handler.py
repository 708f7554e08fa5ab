"""The legacy serverless handler: through the runpod SDK's local API, and as a function."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from aiohttp import web
from clip_client import (
    ClipAuthError,
    ClipImageFetchError,
    ClipInvalidRequestError,
    ClipServerError,
    ClipTimeoutError,
    RetryPolicy,
    RunPodServerlessClipClient,
)
from clip_client.__main__ import main as cli_main
from clip_client.signing import legacy_message, sign

from app.inference.loading import load_clip
from app.inference.model import Embedder
from app.legacy import LegacyHandler
from tests.support.api import call
from tests.support.data import tiny_settings
from tests.support.handler_server import run_handler_api
from tests.support.service import run_service
from tests.support.stubs import Sleeps, stub_server

LEGACY_SECRET = "legacy-secret"
HANDLER_ENV = {
    "EMBEDDING_HMAC_SECRET": f"{LEGACY_SECRET},older-secret",
    "CLIP_MODEL": "clip-tiny",
    "CLIP_PRETRAINED": "none",
    "DEVICE": "cpu",
    "ALLOW_PRIVATE_URLS": "1",
    "IMAGE_DOWNLOAD_TIMEOUT_S": "3",
    "RUNPOD_LOG_LEVEL": "ERROR",
}


@pytest.fixture(scope="module")
def handler_api() -> Iterator[str]:
    with run_handler_api(HANDLER_ENV) as base:
        yield base


def serverless(base: str, secret: str = LEGACY_SECRET) -> tuple[RunPodServerlessClipClient, Sleeps]:
    sleeps = Sleeps()
    return RunPodServerlessClipClient(base, "api-key", secret, retry=RetryPolicy(sleep=sleeps)), sleeps


async def test_serverless_client_embeds_through_runpod_local_api(handler_api, image_server):
    client, sleeps = serverless(handler_api)
    async with client:
        vector = await client.embed_image(image_server.url("img/photo0.jpg"))
    assert len(vector) == 64 and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert sleeps.delays == []


async def test_serverless_client_bad_legacy_signature_raises_auth_error(handler_api, image_server):
    client, sleeps = serverless(handler_api, secret="wrong-secret")
    async with client:
        with pytest.raises(ClipAuthError) as caught:
            await client.embed_image(image_server.url("img/photo0.jpg"))
    assert caught.value.code == "unauthorized" and caught.value.message == "missing or invalid signature"
    assert caught.value.request_id  # the job's id, under which the handler logged the reason
    assert sleeps.delays == []


def test_handler_api_bad_signature_is_failed_job_with_error(handler_api, image_server):
    url = image_server.url("img/photo0.jpg")
    body = {"input": {"image_url": url, "timestamp": int(time.time()), "signature": "0" * 64}}
    req = urllib.request.Request(
        f"{handler_api}/runsync", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        job = json.loads(resp.read())
    assert job["status"] == "FAILED" and "output" not in job
    assert json.loads(job["error"]) == {"code": "unauthorized", "message": "missing or invalid signature"}


@pytest.mark.parametrize(
    ("path", "exc", "code"),
    [
        ("img/missing.jpg", ClipImageFetchError, "download_failed"),
        ("img/page.html", ClipInvalidRequestError, "invalid_image"),
    ],
)
async def test_serverless_client_raises_handler_error_code(handler_api, image_server, path, exc, code):
    client, _ = serverless(handler_api)
    async with client:
        with pytest.raises(exc) as caught:
            await client.embed_image(image_server.url(path))
    assert caught.value.code == code


async def test_serverless_client_signs_with_first_secret_of_list(handler_api, image_server):
    client, _ = serverless(handler_api, secret=f"{LEGACY_SECRET},another")
    async with client:
        assert len(await client.embed_image(image_server.url("img/photo3.jpg"))) == 64


async def test_serverless_client_embed_images_results_in_order(handler_api, image_server):
    urls = [image_server.url("img/photo0.jpg"), image_server.url("img/missing.jpg"), image_server.url("img/photo1.jpg")]
    client, _ = serverless(handler_api)
    async with client:
        results = await client.embed_images(urls)
    assert [r.url for r in results] == urls
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.code == "download_failed" and len(results[2].embedding) == 64


def test_cli_serverless_backend_switch(handler_api, image_server, monkeypatch, capsys):
    monkeypatch.setenv("CLIP_INFERENCE_BACKEND", "runpod_serverless")
    monkeypatch.setenv("RUNPOD_ENDPOINT_URL", f"{handler_api}/runsync")
    monkeypatch.setenv("RUNPOD_API_KEY", "api-key")
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", LEGACY_SECRET)
    assert cli_main(["image", image_server.url("img/photo2.jpg")]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == 64
    assert cli_main(["text", "a cat"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_supported"


# --- the handler as a function (same process), with one tiny model for the module -------------


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_clip(tiny_settings())


@pytest.fixture
async def legacy(embedder) -> AsyncIterator[LegacyHandler]:
    handler = LegacyHandler(tiny_settings(embedding_hmac_secret=f"{LEGACY_SECRET},older-secret"), embedder)
    yield handler
    await handler.aclose()


def signed_input(url: str, secret: str = LEGACY_SECRET, timestamp: int | str | None = None) -> dict[str, object]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {"image_url": url, "timestamp": ts, "signature": sign(secret, legacy_message(url, ts))}


async def test_handler_output_matches_service_embedding(embedder, legacy, image_server):
    url = image_server.url("img/photo4.jpg")
    output = await legacy.handle({"id": "j1", "input": signed_input(url)})
    with run_service(tiny_settings(), embedder_factory=lambda _: embedder) as running:
        status, body, _ = call(running.base, "/v1/embed/image", {"image_url": url})
    assert status == 200
    assert set(output) == {"embedding", "dim"} and output["dim"] == 64
    assert np.allclose(output["embedding"], body["embedding"], atol=1e-6)


async def test_handler_accepts_older_rotated_secret(legacy, image_server):
    output = await legacy.handle({"input": signed_input(image_server.url("img/photo0.jpg"), "older-secret")})
    assert output["dim"] == 64


async def test_handler_accepts_timestamp_as_digit_string(legacy, image_server):
    job_input = signed_input(image_server.url("img/photo0.jpg"), timestamp=str(int(time.time())))
    output = await legacy.handle({"input": job_input})
    assert output["dim"] == 64


@pytest.mark.parametrize(
    ("job_input", "code"),
    [
        ("not an object", "invalid_request"),
        ({"timestamp": 1, "signature": "x"}, "invalid_request"),
        ({"image_url": "http://x/a.jpg", "signature": "x"}, "unauthorized"),
        ({"image_url": "http://x/a.jpg", "timestamp": True, "signature": "x"}, "unauthorized"),
        ({"image_url": "http://x/a.jpg", "timestamp": "12a", "signature": "x"}, "unauthorized"),
        ({"image_url": "http://x/a.jpg", "timestamp": int(time.time())}, "unauthorized"),
        (signed_input("http://x/a.jpg", timestamp=int(time.time()) - 3600), "unauthorized"),
        (signed_input("http://x/a.jpg", secret="wrong"), "unauthorized"),
        (signed_input("ftp://x/a.jpg"), "invalid_url"),
    ],
)
async def test_handler_refuses_bad_input_with_error_output(legacy, job_input, code):
    output = await legacy.handle({"id": "j", "input": job_input})
    assert set(output) == {"error"} and output["error"]["code"] == code


async def test_handler_insecure_mode_skips_signature(embedder, image_server):
    handler = LegacyHandler(tiny_settings(embedding_hmac_secret=None, allow_insecure_auth=True), embedder)
    output = await handler.handle({"input": {"image_url": image_server.url("img/photo5.jpg")}})
    await handler.aclose()
    assert output["dim"] == 64


# --- RunPod answers the local API never gives: queued jobs, platform error objects ---------------


async def test_serverless_client_polls_status_until_completed():
    polls: list[str] = []
    auth: list[str] = []

    async def runsync(request: web.Request) -> web.Response:
        auth.append(request.headers["Authorization"])
        return web.json_response({"id": "job-1", "status": "IN_QUEUE"})

    async def status(request: web.Request) -> web.Response:
        polls.append(request.match_info["job"])
        if len(polls) < 2:
            return web.json_response({"id": "job-1", "status": "IN_PROGRESS"})
        return web.json_response({"id": "job-1", "status": "COMPLETED", "output": {"embedding": [1.0, 0.0], "dim": 2}})

    sleeps = Sleeps()
    routes = {("POST", "/v2/e/runsync"): runsync, ("GET", "/v2/e/status/{job}"): status}
    async with (
        stub_server(routes) as base,
        RunPodServerlessClipClient(
            f"{base}/v2/e", "api-key", "s", retry=RetryPolicy(sleep=sleeps), poll_interval_s=0.5
        ) as client,
    ):
        assert await client.embed_image("http://images.example/a.jpg") == [1.0, 0.0]
    assert auth == ["Bearer api-key"] and polls == ["job-1", "job-1"] and sleeps.delays == [0.5, 0.5]


@pytest.mark.parametrize(
    ("job", "exc", "code"),
    [
        ({"status": "FAILED", "error": {"code": "unauthorized", "message": "m"}}, ClipAuthError, "unauthorized"),
        (
            {"status": "FAILED", "error": '{"code": "invalid_image", "message": "m"}'},
            ClipInvalidRequestError,
            "invalid_image",
        ),
        (
            {"status": "FAILED", "error": json.dumps({"error_type": "RuntimeError", "error_message": "boom"})},
            ClipServerError,
            "handler_exception",
        ),
        ({"status": "TIMED_OUT"}, ClipTimeoutError, "timeout"),
        ({"status": "CANCELLED"}, ClipServerError, "server_error"),
    ],
)
async def test_serverless_client_maps_failed_jobs(job, exc, code):
    async def runsync(_: web.Request) -> web.Response:
        return web.json_response({"id": "job-2"} | job)

    async with (
        stub_server({("POST", "/runsync"): runsync}) as base,
        RunPodServerlessClipClient(base, "api-key", "s") as client,
    ):
        with pytest.raises(exc) as caught:
            await client.embed_image("http://images.example/a.jpg")
    assert type(caught.value) is exc and caught.value.code == code
