"""/metrics: counters and histograms move as requests flow; gauges tell readiness and queues."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from clip_client.signing import EMBEDDINGS_PATH, body_payload_id, signed_headers

from tests.support.api import SECRET, call, upload
from tests.support.data import jpeg_bytes, tiny_settings
from tests.support.imageserver import ImageServer
from tests.support.metrics import delta, scrape, value
from tests.support.service import RunningService, run_service

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def fresh() -> Iterator[RunningService]:
    with run_service(tiny_settings(max_image_size_bytes=LIMIT)) as running:
        yield running


def test_metrics_is_prometheus_text_without_auth(fresh):
    with urllib.request.urlopen(f"{fresh.base}/metrics", timeout=10) as resp:
        status, ctype, text = resp.status, resp.headers["Content-Type"], resp.read().decode()
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    assert "# TYPE clip_http_requests_total counter" in text
    assert "# TYPE clip_stage_duration_seconds histogram" in text


def test_metrics_count_requests_items_bytes_stages_and_errors(fresh, image_server):
    good0, good1 = image_server.url("img/photo2.jpg"), image_server.url("img/photo3.jpg")
    missing = image_server.url("img/missing.jpg")
    before = scrape(fresh.base)
    assert call(fresh.base, "/v1/embed/image", {"image_url": good0})[0] == 200
    assert call(fresh.base, "/v1/embed/image", {"image_url": missing})[0] == 422
    status, body, _ = call(fresh.base, "/v1/embed/image-batch", {"image_urls": [good1, missing]})
    assert (status, body["succeeded"], body["failed"]) == (200, 1, 1)
    assert call(fresh.base, "/v1/embed/text", {"text": "metrics text"})[0] == 200
    assert call(fresh.base, "/v1/embed/text", {"text": "   "})[0] == 422
    after = scrape(fresh.base)

    requests = "clip_http_requests_total"
    assert delta(before, after, requests, endpoint="/v1/embed/image", status="200") == 1
    assert delta(before, after, requests, endpoint="/v1/embed/image", status="422") == 1
    assert delta(before, after, requests, endpoint="/v1/embed/image-batch", status="200") == 1
    assert delta(before, after, requests, endpoint="/v1/embed/text", status="200") == 1
    assert delta(before, after, requests, endpoint="/v1/embed/text", status="422") == 1
    assert delta(before, after, "clip_request_duration_seconds_count", endpoint="/v1/embed/image") == 2
    assert delta(before, after, "clip_embeddings_total", kind="image") == 2
    assert delta(before, after, "clip_embeddings_total", kind="text") == 1
    # One for the single request's 422, one for the failed item inside the batch.
    assert delta(before, after, "clip_errors_total", code="download_failed") == 2
    assert delta(before, after, "clip_errors_total", code="invalid_request") == 1
    photo_bytes = len(image_server.files["photo2.jpg"]) + len(image_server.files["photo3.jpg"])
    assert delta(before, after, "clip_download_bytes_total") == photo_bytes
    assert delta(before, after, "clip_stage_duration_seconds_count", stage="download") == 2
    assert delta(before, after, "clip_stage_duration_seconds_count", stage="decode") == 2
    assert delta(before, after, "clip_stage_duration_seconds_count", stage="queue_wait") == 3
    # Sequential requests: one forward pass each (two image batches, one text batch).
    assert delta(before, after, "clip_stage_duration_seconds_count", stage="forward") == 3
    assert delta(before, after, "clip_batch_size_count", queue="images") == 2
    assert delta(before, after, "clip_batch_size_sum", queue="images") == 2
    assert delta(before, after, "clip_cache_misses_total", kind="image") == 2
    assert delta(before, after, "clip_cache_misses_total", kind="text") == 1


def _send(base: str, images: ImageServer, endpoint: str) -> int:
    """Send one request to `endpoint` whose items partly fail (see FAILED_ITEMS); return its status."""
    good, missing, gone = (images.url(p) for p in ("img/photo4.jpg", "img/count-missing.jpg", "status/410"))
    if endpoint == "/v1/embed/image-upload":
        parts = [jpeg_bytes(64, 48, 3), b"<html>", b"\xff" * (LIMIT + 1)]
        return upload(base, [("image", f"{i}.jpg", data) for i, data in enumerate(parts)])[0]
    if endpoint.startswith(EMBEDDINGS_PATH):
        inputs = [good, missing, gone] if endpoint.endswith("image") else ["a cat", "   ", ""]
        body = {"model": "clip-tiny", "input": inputs, "modality": endpoint.rsplit("=", 1)[1]}
        raw = json.dumps(body).encode()
        headers = signed_headers(SECRET, "POST", EMBEDDINGS_PATH, body_payload_id(raw))
        return call(base, EMBEDDINGS_PATH, raw=raw, secret=None, headers=headers)[0]
    bodies = {
        "/v1/embed/image": {"image_url": missing},
        "/v1/embed/image-batch": {"image_urls": [good, missing, images.url("img/page.html"), gone]},
        "/v1/embed/text": {"text": "   "},
        "/v1/embed/text-batch": {"texts": ["a cat", "   ", "a dog"]},
    }
    return call(base, endpoint, bodies[endpoint])[0]


# endpoint → the request's status, and how much each code of clip_errors_total grows: once per failed item.
FAILED_ITEMS = {
    "/v1/embed/image": (422, {"download_failed": 1}),
    "/v1/embed/image-batch": (200, {"download_failed": 2, "invalid_image": 1}),
    "/v1/embed/image-upload": (200, {"invalid_image": 1, "image_too_large": 1}),
    "/v1/embed/text": (422, {"invalid_request": 1}),
    "/v1/embed/text-batch": (200, {"invalid_request": 1}),
    # All or nothing: the first bad item fails the request; every failed image was fetched, and counts.
    "/v1/embeddings?modality=image": (422, {"download_failed": 2}),
    # The first bad text stops the request before the others are looked at.
    "/v1/embeddings?modality=text": (422, {"invalid_request": 1}),
}


@pytest.mark.parametrize(("endpoint", "expected"), FAILED_ITEMS.items(), ids=list(FAILED_ITEMS))
def test_metrics_count_each_failed_item_once(fresh, image_server, endpoint, expected):
    status, counts = expected
    before = scrape(fresh.base)
    assert _send(fresh.base, image_server, endpoint) == status
    after = scrape(fresh.base)
    codes = {dict(labels)["code"] for name, labels in before.keys() | after.keys() if name == "clip_errors_total"}
    grown = {code: delta(before, after, "clip_errors_total", code=code) for code in codes}
    assert {code: n for code, n in grown.items() if n} == counts


def test_metrics_gauges_report_readiness_queues_and_model(fresh):
    samples = scrape(fresh.base)
    assert value(samples, "clip_ready") == 1
    assert value(samples, "clip_requests_in_flight") == 0
    assert value(samples, "clip_admitted_items") == 0
    assert value(samples, "clip_admitted_items_limit") == 1024
    assert value(samples, "clip_queue_depth", queue="images") == 0
    assert value(samples, "clip_queue_depth", queue="texts") == 0
    assert value(samples, "clip_model_info", model="clip-tiny", pretrained="none", device="cpu", dtype="float32") == 1
    assert value(samples, "clip_model_load_seconds") > 0
    assert not any(name.startswith("clip_gpu_memory") for name, _ in samples)  # CPU: no GPU gauges


def test_metrics_unknown_paths_share_one_label(fresh):
    before = scrape(fresh.base)
    for path in ("/wp-admin", "/.env", "/v1/nope"):
        assert call(fresh.base, path)[0] == 404
    after = scrape(fresh.base)
    assert delta(before, after, "clip_http_requests_total", endpoint="other", status="404") == 3
    assert delta(before, after, "clip_errors_total", code="not_found") == 3
