"""The embedding cache: a hit equals the computed answer, skips the model, and can be turned off."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference.cache import EmbeddingCache, image_key, text_key
from tests.support.api import call
from tests.support.data import tiny_settings
from tests.support.fake_model import FakeEmbedder
from tests.support.metrics import scrape, value
from tests.support.service import run_service


def test_cache_evicts_least_recently_used_and_stores_read_only_copies():
    cache = EmbeddingCache(2)
    batch = np.ones((4, 3), dtype=np.float32)
    cache.put("a", batch[0])
    cache.put("b", batch[1])
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", batch[2])
    batch[0] = 7.0
    stored = cache.get("a")
    assert (cache.get("b"), len(cache)) == (None, 2)
    np.testing.assert_array_equal(stored, [1.0, 1.0, 1.0])  # a copy: later writes to the batch don't leak in
    assert stored.base is None and not stored.flags.writeable


def test_cache_keys_are_sha256_of_bytes_and_text_per_kind():
    assert image_key(b"abc") == "image:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert text_key("abc") == "text:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_cache_hit_equals_computed_vector_with_real_model(image_server):
    url = image_server.url("img/photo4.jpg")
    with run_service(tiny_settings()) as svc:
        miss = call(svc.base, "/v1/embed/image", {"image_url": url})
        hit = call(svc.base, "/v1/embed/image", {"image_url": url})
        batch = call(svc.base, "/v1/embed/image-batch", {"image_urls": [url]})
        text_miss = call(svc.base, "/v1/embed/text", {"text": "a cached caption"})
        text_hit = call(svc.base, "/v1/embed/text", {"text": "a cached caption"})
        samples = scrape(svc.base)
    assert miss[0] == hit[0] == batch[0] == 200
    assert hit[1]["embedding"] == miss[1]["embedding"]
    assert batch[1]["results"][0]["embedding"] == miss[1]["embedding"]
    assert text_hit[1]["embedding"] == text_miss[1]["embedding"]
    assert value(samples, "clip_cache_hits_total", kind="image") == 2
    assert value(samples, "clip_cache_misses_total", kind="image") == 1
    assert (
        value(samples, "clip_cache_hits_total", kind="text"),
        value(samples, "clip_cache_misses_total", kind="text"),
    ) == (1, 1)
    assert value(samples, "clip_cache_entries") == 2
    assert value(samples, "clip_batch_size_count", queue="images") == 1  # the hits never reached the model


@pytest.mark.parametrize(("entries", "model_batches"), [(10_000, [1]), (0, [1, 1])])
def test_cache_skips_model_on_hit_unless_turned_off(image_server, entries, model_batches):
    model = FakeEmbedder()
    url = image_server.url("img/photo5.jpg")
    with run_service(tiny_settings(cache_max_entries=entries), embedder_factory=lambda s: model) as svc:
        answers = [call(svc.base, "/v1/embed/image", {"image_url": url}) for _ in range(2)]
        samples = scrape(svc.base)
    assert [status for status, _, _ in answers] == [200, 200]
    assert answers[0][1]["embedding"] == answers[1][1]["embedding"]
    assert model.image_batches == model_batches
    assert (("clip_cache_entries", ()) in samples) is (entries > 0)
