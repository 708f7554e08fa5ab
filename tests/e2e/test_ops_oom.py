"""Out of accelerator memory: split the batch, retry down to one item, fail only what cannot fit."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from app.errors import Overloaded
from app.inference.model_guard import run_splitting_on_oom
from tests.support.api import call
from tests.support.data import jpeg_bytes, tiny_settings
from tests.support.fake_model import FakeEmbedder
from tests.support.imageserver import ImageServer
from tests.support.metrics import scrape, value
from tests.support.service import run_service


class OomEmbedder(FakeEmbedder):
    """Raises CUDA's OutOfMemoryError for batches over `limit` items, or holding an all-zero (black) item."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.attempts: list[int] = []

    def _run(self, rows, record):
        self.attempts.append(len(rows))
        if len(rows) > self.limit or any(not r.any() for r in rows):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._run(rows, record)


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG")
    return buf.getvalue()


def test_oom_split_halves_until_batches_fit_and_keeps_order():
    model = OomEmbedder(limit=2)
    payloads = [torch.full((4, 4, 3), float(i + 1)) for i in range(8)]
    outcomes = run_splitting_on_oom(model.encode_images, payloads)
    assert model.attempts == [8, 4, 2, 2, 4, 2, 2]
    assert model.image_batches == [2, 2, 2, 2]
    for payload, outcome in zip(payloads, outcomes, strict=True):
        np.testing.assert_array_equal(outcome, FakeEmbedder()._run([payload], [])[0])


def test_oom_item_that_fails_alone_gets_overloaded_while_others_succeed():
    model = OomEmbedder(limit=8)
    payloads = [torch.ones(4, 4, 3), torch.zeros(4, 4, 3), torch.full((4, 4, 3), 2.0)]
    ooms: list[int] = []
    outcomes = run_splitting_on_oom(model.encode_images, payloads, ooms.append)
    assert ooms == [3, 2, 1]
    assert isinstance(outcomes[1], Overloaded) and "out of accelerator memory" in outcomes[1].message
    np.testing.assert_array_equal(outcomes[0], FakeEmbedder()._run([payloads[0]], [])[0])
    np.testing.assert_array_equal(outcomes[2], FakeEmbedder()._run([payloads[2]], [])[0])


def test_oom_through_the_service_fails_one_item_and_stays_healthy():
    model = OomEmbedder(limit=2)
    with ImageServer() as images, run_service(tiny_settings(), embedder_factory=lambda s: model) as svc:
        for i in range(5):
            images.files[f"p{i}.jpg"] = jpeg_bytes(64, 48, 10 + i)
        images.files["black.png"] = _png((0, 0, 0))
        urls = [images.url(f"img/p{i}.jpg") for i in range(5)]
        urls.insert(2, images.url("img/black.png"))
        status, body, _ = call(svc.base, "/v1/embed/image-batch", {"image_urls": urls})
        with ThreadPoolExecutor(6) as pool:  # concurrent singles: batches above the limit get split
            singles = list(pool.map(lambda u: call(svc.base, "/v1/embed/image", {"image_url": u}), urls))
        health = call(svc.base, "/health")
        samples = scrape(svc.base)
    assert (status, body["succeeded"], body["failed"]) == (200, 5, 1)
    assert body["results"][2]["error"]["code"] == "overloaded"
    assert [r["error"] is None for r in body["results"]] == [True, True, False, True, True, True]
    assert sorted(s for s, _, _ in singles) == [200] * 5 + [503]
    assert health[0] == 200
    assert value(samples, "clip_oom_events_total") >= 2
    assert value(samples, "clip_errors_total", code="overloaded") == 2


class StartingOomEmbedder(OomEmbedder):
    """Starts batches as a GPU model does (ENGINE_OVERLAP), and runs out of memory at the start as it would."""

    def start_images(self, pixels):
        rows = self.encode_images(pixels)  # raises out-of-memory over the limit, as the launch would

        class Started:
            def wait(self):
                return rows

        return Started()


def test_oom_at_the_start_of_an_overlapped_batch_splits_it_and_counts_once():
    from app.inference.model_guard import GuardedEmbedder
    from app.ops.metrics import Metrics

    model = StartingOomEmbedder(limit=2)
    metrics = Metrics()
    guarded = GuardedEmbedder(model, metrics)
    payloads = [torch.full((4, 4, 3), float(i + 1)) for i in range(4)]
    split = guarded.start_images(payloads)
    started = guarded.start_images(payloads[:2])
    assert isinstance(split, list) and not isinstance(started, list)
    assert model.attempts == [4, 2, 2, 2]  # the whole batch once, then its halves: no second whole try
    rows = [*split, *started.wait()]
    want = [FakeEmbedder()._run([p], [])[0] for p in [*payloads, *payloads[:2]]]
    np.testing.assert_array_equal(np.stack(rows), np.stack(want))
    sample = metrics.registry.get_sample_value
    assert sample("clip_oom_events_total") == 1
    assert sample("clip_batch_size_sum", {"queue": "images"}) == 6  # each started batch recorded once
