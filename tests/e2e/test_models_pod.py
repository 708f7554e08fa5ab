"""MODELS in a pod of two workers (WORKERS=2, STATE_URL): each worker serves every model, as it serves one today."""

from __future__ import annotations

import json

import numpy as np

from tests.support.metrics import delta, scrape
from tests.support.pod import pod, redis_or_skip
from tests.support.redis import RedisServer
from tests.support.served import signed_call


def test_models_pod_workers_each_serve_every_model(tmp_path, checkpoint):
    models = [
        {"model": "clip-tiny", "pretrained": checkpoint, "name": "tiny"},
        {"model": "clip-tiny", "pretrained": checkpoint, "name": "tiny-text", "towers": "text"},
    ]
    with (
        RedisServer(redis_or_skip(), tmp_path) as redis,
        pod(tmp_path / "pod.log", redis.url, MODELS=json.dumps(models)) as (_, base),
    ):
        before = scrape(base)
        answers = [
            signed_call(base, "/v1/embed/text", {"text": f"a cat {i}", "model": name})
            for i in range(6)
            for name in ("tiny", "tiny-text")
        ]
        after = scrape(base)
        image = {"image_url": "https://example.com/a.jpg", "model": "tiny-text"}
        refused = signed_call(base, "/v1/embed/image", image)
    assert [(status, body["model"]) for status, body, _ in answers] == [(200, "tiny"), (200, "tiny-text")] * 6
    # The same weights, one tower dropped: equal text vectors from either model, whichever worker answered.
    vectors = np.array([body["embedding"] for _, body, _ in answers]).reshape(6, 2, -1)
    np.testing.assert_allclose(vectors[:, 0], vectors[:, 1], rtol=0, atol=1e-6)
    # Counted pod-wide, by model: the workers' counters summed.
    assert delta(before, after, "clip_model_embeddings_total", model="tiny-text", kind="text") == 6
    assert delta(before, after, "clip_model_embeddings_total", model="tiny", kind="text") == 6
    assert (refused[0], refused[1]["error"]["code"]) == (422, "invalid_request")
