"""Inline images (data URIs) on the image endpoints: never fetched, same vectors, same errors."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest

from tests.support.api import call
from tests.support.data import jpeg_bytes, png_rgba_bytes, tiny_settings
from tests.support.service import RunningService, run_service

LIMIT = 64 * 1024


def data_uri(data: bytes, media: str = "image/jpeg") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def uncached() -> Iterator[RunningService]:
    """A service without the embedding cache, so that equal vectors are computed twice, not looked up."""
    with run_service(tiny_settings(cache_max_entries=0, max_image_size_bytes=LIMIT)) as running:
        yield running


def test_embed_image_data_uri_equals_the_url_and_is_never_fetched(uncached, image_server):
    _, by_url, _ = call(uncached.base, "/v1/embed/image", {"image_url": image_server.url("img/photo0.jpg")})
    before = image_server.count("/")
    uri = data_uri(image_server.files["photo0.jpg"])
    status, inline, _ = call(uncached.base, "/v1/embed/image", {"image_url": uri})
    assert status == 200
    np.testing.assert_allclose(inline["embedding"], by_url["embedding"], atol=1e-6)
    assert image_server.count("/") == before


def test_batch_mixes_urls_and_data_uris_with_per_item_errors(uncached, image_server):
    photo = jpeg_bytes(200, 150, 7)
    image_server.files["inline7.jpg"] = photo
    urls = [
        data_uri(photo),
        image_server.url("img/inline7.jpg"),
        data_uri(png_rgba_bytes(), "image/png"),
        "data:image/jpeg;base64,not*base64",
        data_uri(photo, "image/svg+xml"),
        data_uri(jpeg_bytes(1200, 900, 1, quality=100)),
        data_uri(b"GIF89a not really"),
    ]
    status, body, _ = call(uncached.base, "/v1/embed/image-batch", {"image_urls": urls})
    assert status == 200
    codes = [r["error"]["code"] if r["error"] else None for r in body["results"]]
    assert codes == [None, None, None, "invalid_url", "invalid_image", "image_too_large", "invalid_image"]
    np.testing.assert_allclose(body["results"][0]["embedding"], body["results"][1]["embedding"], atol=1e-6)


@pytest.mark.parametrize(
    ("uri", "status", "code"),
    [
        ("data:image/jpeg;base64,%%%%", 422, "invalid_url"),
        ("data:image/jpeg,rawbytes", 422, "invalid_url"),
        ("data:text/html;base64,PGh0bWw+", 422, "invalid_image"),
        ("data:image/png;base64," + "A" * (LIMIT * 2), 413, "image_too_large"),
        ("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode(), 422, "invalid_image"),
    ],
)
def test_embed_image_data_uri_refused_with_the_download_codes(uncached, uri, status, code):
    got, body, _ = call(uncached.base, "/v1/embed/image", {"image_url": uri})
    assert (got, body["error"]["code"]) == (status, code)
    assert body["error"]["message"]


def test_embed_image_data_uri_over_the_body_limit_is_413_before_parsing(image_server):
    with run_service(tiny_settings(max_request_bytes=4096)) as svc:
        status, body, _ = call(svc.base, "/v1/embed/image", {"image_url": data_uri(jpeg_bytes(300, 200, 2))})
    assert (status, body["error"]["code"]) == (413, "request_too_large")
