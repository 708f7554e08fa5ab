"""Image endpoints against the real app and a real local image server."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.api import call
from tests.support.data import tiny_settings
from tests.support.service import run_service


def embed(service, url: str) -> tuple[int, dict]:
    status, body, _ = call(service.base, "/v1/embed/image", {"image_url": url})
    return status, body


def test_embed_image_returns_normalised_float_vector(service, image_server):
    status, body = embed(service, image_server.url("img/photo0.jpg"))
    assert status == 200
    assert body["dim"] == 64 and body["model"] == "clip-tiny"
    vector = np.asarray(body["embedding"], dtype=np.float64)
    assert vector.shape == (64,)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-3


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("status/404", 422, "download_failed"),  # the image server's "no" is the caller's to fix: final
        ("status/403", 422, "download_failed"),
        ("status/429", 502, "download_failed"),  # its "not now" and its faults: retryable
        ("status/500", 502, "download_failed"),
        ("status/503", 502, "download_failed"),
        ("img/page.html", 422, "invalid_image"),
        ("img/random.jpg", 422, "invalid_image"),
        ("img/truncated.jpg", 422, "invalid_image"),
        ("unbounded", 413, "image_too_large"),
        ("slow/photo0.jpg?delay=6", 504, "download_timeout"),
    ],
)
def test_embed_image_error_codes(service, image_server, path, status, code):
    got_status, body = embed(service, image_server.url(path))
    assert (got_status, body["error"]["code"]) == (status, code)
    assert body["error"]["message"]


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "not a url", "http://"])
def test_embed_image_invalid_url(service, url):
    status, body = embed(service, url)
    assert (status, body["error"]["code"]) == (422, "invalid_url")


def test_embed_image_connection_refused_is_download_failed(service):
    status, body = embed(service, "http://127.0.0.1:9/nothing-listens-here.jpg")
    assert (status, body["error"]["code"]) == (502, "download_failed")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("img/large.jpg", 413, "image_too_large"),  # honest Content-Length over the limit
        ("unbounded?chunks=100", 413, "image_too_large"),  # no Content-Length: counted while streaming
        ("lying-length/large.jpg?claim=2000&repeat=20", 422, "invalid_image"),  # only the claimed bytes are read
    ],
)
def test_embed_image_size_limit_holds_whatever_the_server_claims(image_server, path, status, code):
    with run_service(tiny_settings(max_image_size_bytes=4096)) as svc:
        got_status, body = embed(svc, image_server.url(path))
    assert (got_status, body["error"]["code"]) == (status, code)


def test_embed_image_unknown_field_is_422(service, image_server):
    status, body, _ = call(
        service.base, "/v1/embed/image", {"image_url": image_server.url("img/photo0.jpg"), "extra": 1}
    )
    assert (status, body["error"]["code"]) == (422, "invalid_request")


def test_batch_keeps_order_with_failures_at_several_positions(service, image_server):
    urls = [
        image_server.url("status/404"),
        image_server.url("img/photo1.jpg"),
        image_server.url("img/page.html"),
        image_server.url("img/photo2.jpg"),
        image_server.url("img/photo3.jpg"),
        "ftp://example.com/x.jpg",
    ]
    status, body, _ = call(service.base, "/v1/embed/image-batch", {"image_urls": urls})
    assert status == 200
    assert [r["index"] for r in body["results"]] == list(range(6))
    codes = [r["error"]["code"] if r["error"] else None for r in body["results"]]
    assert codes == ["download_failed", None, "invalid_image", None, None, "invalid_url"]
    assert (body["succeeded"], body["failed"], body["dim"]) == (3, 3, 64)
    for r in body["results"]:
        assert (r["embedding"] is None) == (r["error"] is not None)
    # Each good item equals the same image embedded alone.
    for index, name in [(1, "photo1.jpg"), (3, "photo2.jpg"), (4, "photo3.jpg")]:
        _, alone = embed(service, image_server.url(f"img/{name}"))
        np.testing.assert_allclose(body["results"][index]["embedding"], alone["embedding"], atol=1e-5)


def test_batch_vectors_differ_per_image(service, image_server):
    urls = [image_server.url(f"img/photo{i}.jpg") for i in range(4)]
    _, body, _ = call(service.base, "/v1/embed/image-batch", {"image_urls": urls})
    vectors = np.asarray([r["embedding"] for r in body["results"]])
    assert len({tuple(np.round(v, 4)) for v in vectors}) == 4


def test_batch_empty_is_422(service):
    status, body, _ = call(service.base, "/v1/embed/image-batch", {"image_urls": []})
    assert (status, body["error"]["code"]) == (422, "invalid_request")


@pytest.mark.parametrize("count", [17, 100, 20_000])
def test_batch_over_max_batch_size_is_422_naming_the_setting(service, image_server, count):
    urls = [image_server.url("img/photo0.jpg")] * count
    status, body, _ = call(service.base, "/v1/embed/image-batch", {"image_urls": urls})
    message = f"image_urls holds {count} URLs; at most MAX_BATCH_SIZE=16 are accepted per request"
    assert (status, body) == (422, {"error": {"code": "invalid_request", "message": message}})


def test_batch_all_failed_still_200(service, image_server):
    urls = [image_server.url("status/404"), image_server.url("img/page.html")]
    status, body, _ = call(service.base, "/v1/embed/image-batch", {"image_urls": urls})
    assert status == 200
    assert (body["succeeded"], body["failed"]) == (0, 2)
