"""The pod client against the real service (tiny model) on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import pytest
from clip_client import (
    ClipAuthError,
    ClipImageFetchError,
    ClipInvalidRequestError,
    ClipPodClient,
    ImageResult,
    RetryPolicy,
    RunPodPodClipClient,
    TextResult,
    data_uri,
)
from clip_client.signing import BATCH_PATH, TEXT_BATCH_PATH

from tests.support.api import SECRET
from tests.support.data import tiny_settings
from tests.support.service import run_service
from tests.support.stubs import Sent, Sleeps


def make_client(base: str, secret: str = SECRET, **kwargs: object) -> tuple[ClipPodClient, Sleeps, Sent]:
    sleeps, sent = Sleeps(), Sent()
    client = ClipPodClient(
        base,
        secret,
        retry=RetryPolicy(sleep=sleeps),
        trace_configs=[sent.trace_config()],
        **kwargs,  # type: ignore[arg-type]
    )
    return client, sleeps, sent


def test_client_devlog_name_is_the_pod_client():
    assert RunPodPodClipClient is ClipPodClient


async def test_client_health_reports_service(service):
    client, _, _ = make_client(service.base)
    async with client:
        health = await client.health()
    assert health["status"] == "ok" and health["model"] == "clip-tiny" and health["max_batch_size"] == 16


async def test_client_signing_round_trip_through_service(service, image_server):
    client, sleeps, _ = make_client(service.base)
    async with client:
        image = await client.embed_image(image_server.url("img/photo0.jpg"))
        text = await client.embed_text("a photo of a cat")
        (item,) = await client.embed_images([image_server.url("img/photo0.jpg")])
    assert len(image) == 64 and len(text) == 64
    assert np.linalg.norm(image) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(item.embedding, image, atol=1e-5)
    assert sleeps.delays == []


async def test_client_signs_with_first_of_several_secrets(image_server):
    with run_service(tiny_settings(embedding_hmac_secret=f"{SECRET},older-secret")) as running:
        client, _, _ = make_client(running.base, secret=f"{SECRET},older-secret")
        async with client:
            vector = await client.embed_image(image_server.url("img/photo1.jpg"))
    assert len(vector) == 64


async def test_client_wrong_secret_raises_auth_error_without_retry(service, image_server):
    client, sleeps, sent = make_client(service.base, secret="not-the-secret")
    async with client:
        with pytest.raises(ClipAuthError) as caught:
            await client.embed_image(image_server.url("img/photo0.jpg"))
    assert caught.value.status == 401 and caught.value.code == "signature_mismatch"
    assert sent.requests == [("POST", "/v1/embed/image")]
    assert sleeps.delays == []


async def test_client_422_raised_at_once(service):
    client, sleeps, sent = make_client(service.base)
    async with client:
        with pytest.raises(ClipInvalidRequestError) as caught:
            await client.embed_image("ftp://example.com/cat.jpg")
    assert caught.value.status == 422 and caught.value.code == "invalid_url"
    assert len(sent.requests) == 1 and sleeps.delays == []


@pytest.mark.parametrize(("path", "status"), [("img/client-missing.jpg", 422), ("status/503", 502)])
async def test_client_image_host_failure_not_retried(service, image_server, path, status):
    client, sleeps, sent = make_client(service.base)
    fetches = image_server.count(f"/{path}")
    async with client:
        with pytest.raises(ClipImageFetchError) as caught:
            await client.embed_image(image_server.url(path))
    assert caught.value.status == status and caught.value.code == "download_failed"
    assert len(sent.requests) == 1 and sleeps.delays == []
    assert image_server.count(f"/{path}") == fetches + 1


FAILURES = {
    7: ("img/missing.jpg", "download_failed"),
    20: ("img/page.html", "invalid_image"),
    39: (None, "invalid_url"),
}


async def test_client_embed_images_40_urls_in_3_chunks_in_order(service, image_server):
    urls = [image_server.url(f"img/photo{i % 6}.jpg") for i in range(40)]
    for position, (path, _) in FAILURES.items():
        urls[position] = image_server.url(path) if path else "ftp://example.com/x.jpg"
    client, sleeps, sent = make_client(service.base)
    async with client:
        results = await client.embed_images(urls)
        singles = [await client.embed_image(image_server.url(f"img/photo{k}.jpg")) for k in range(6)]
    assert sent.requests.count(("GET", "/health")) == 1
    assert sent.requests.count(("POST", BATCH_PATH)) == 3
    assert [r.url for r in results] == urls
    assert {i: r.error.code for i, r in enumerate(results) if r.error} == {i: c for i, (_, c) in FAILURES.items()}
    for i, result in enumerate(results):
        if i not in FAILURES:
            assert result.embedding is not None and np.allclose(result.embedding, singles[i % 6], atol=1e-5)
    assert sleeps.delays == []


async def test_client_embed_images_empty_sends_nothing(service):
    client, _, sent = make_client(service.base)
    async with client:
        assert await client.embed_images([]) == []
    assert sent.requests == []


async def test_client_embed_images_uses_given_batch_size(service, image_server):
    urls = [image_server.url(f"img/photo{i}.jpg") for i in range(5)]
    client, _, sent = make_client(service.base, batch_size=2)
    async with client:
        results = await client.embed_images(urls)
    assert sent.requests == [("POST", BATCH_PATH)] * 3
    assert all(isinstance(r, ImageResult) and r.ok for r in results)


async def test_client_reuses_one_session(service, image_server):
    client, _, _ = make_client(service.base)
    async with client:
        await client.health()
        first = client._transport.session()
        await client.embed_image(image_server.url("img/photo0.jpg"))
        assert client._transport.session() is first
    assert first.closed


TEXTS = ["a photo of a cat", "two lines\nof text", "", "ünïcödé ✓", "x" * 10_001, "a red car"]


async def test_client_embed_texts_in_chunks_equal_single_texts_in_order(service):
    client, sleeps, sent = make_client(service.base, batch_size=4)
    async with client:
        results = await client.embed_texts(TEXTS)
        singles = {t: await client.embed_text(t) for t in TEXTS if t and len(t) <= 10_000}
    assert sent.requests[:2] == [("POST", TEXT_BATCH_PATH)] * 2
    assert [r.text for r in results] == TEXTS and all(isinstance(r, TextResult) for r in results)
    assert {i: r.error.code for i, r in enumerate(results) if r.error} == {2: "invalid_request", 4: "invalid_request"}
    for result in results:
        if result.ok:
            assert result.embedding is not None and np.allclose(result.embedding, singles[result.text], atol=1e-5)
    assert sleeps.delays == []


async def test_client_embed_texts_empty_sends_nothing(service):
    client, _, sent = make_client(service.base)
    async with client:
        assert await client.embed_texts([]) == []
    assert sent.requests == []


async def test_client_inline_images_equal_the_url_path(service, image_server, tmp_path):
    data = image_server.files["rgba.png"]
    (tmp_path / "logo.png").write_bytes(data)
    client, _, sent = make_client(service.base)
    async with client:
        by_url = await client.embed_image(image_server.url("img/rgba.png"))
        from_bytes = await client.embed_image_bytes(data)
        named = await client.embed_image_bytes(data, "image/png")
        from_file = await client.embed_image_file(tmp_path / "logo.png")
        (from_batch,) = await client.embed_images([data_uri(data)])
    for vector in (from_bytes, named, from_file, from_batch.embedding):
        assert vector is not None and np.allclose(vector, by_url, atol=1e-5)
    assert sent.requests.count(("POST", "/v1/embed/image")) == 4


async def test_client_inline_non_image_refused_before_sending(service):
    client, _, sent = make_client(service.base)
    async with client:
        with pytest.raises(ClipInvalidRequestError) as caught:
            await client.embed_image_bytes(b"<html><body>not an image</body></html>")
    assert caught.value.code == "invalid_image" and sent.requests == []


async def test_client_inline_broken_image_refused_by_the_service(service, image_server):
    client, _, _ = make_client(service.base)
    async with client:
        with pytest.raises(ClipInvalidRequestError) as caught:
            await client.embed_image_bytes(image_server.files["truncated.jpg"])
    assert caught.value.status == 422 and caught.value.code == "invalid_image"
