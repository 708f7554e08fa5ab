"""/metrics: counters and histograms move as requests flow; gauges tell readiness and queues."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.api import call
from tests.support.data import tiny_settings
from tests.support.metrics import delta, scrape, value
from tests.support.service import RunningService, run_service


@pytest.fixture(scope="module")
def fresh() -> Iterator[RunningService]:
    with run_service(tiny_settings()) as running:
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
    assert call(fresh.base, "/v1/embed/image", {"image_url": missing})[0] == 502
    status, body, _ = call(fresh.base, "/v1/embed/image-batch", {"image_urls": [good1, missing]})
    assert (status, body["succeeded"], body["failed"]) == (200, 1, 1)
    assert call(fresh.base, "/v1/embed/text", {"text": "metrics text"})[0] == 200
    assert call(fresh.base, "/v1/embed/text", {"text": "   "})[0] == 422
    after = scrape(fresh.base)

    requests = "clip_http_requests_total"
    assert delta(before, after, requests, endpoint="/v1/embed/image", status="200") == 1
    assert delta(before, after, requests, endpoint="/v1/embed/image", status="502") == 1
    assert delta(before, after, requests, endpoint="/v1/embed/image-batch", status="200") == 1
    assert delta(before, after, requests, endpoint="/v1/embed/text", status="200") == 1
    assert delta(before, after, requests, endpoint="/v1/embed/text", status="422") == 1
    assert delta(before, after, "clip_request_duration_seconds_count", endpoint="/v1/embed/image") == 2
    assert delta(before, after, "clip_embeddings_total", kind="image") == 2
    assert delta(before, after, "clip_embeddings_total", kind="text") == 1
    # One for the single request's 502, one for the failed item inside the batch.
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
