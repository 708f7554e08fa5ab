"""The service's vectors equal open_clip's own forward pass for the same weights."""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from app.inference.model import CONFIG_DIR, ClipEmbedder
from app.inference.text_tower import TextTower
from tests.support.api import call
from tests.support.data import jpeg_bytes, tiny_settings
from tests.support.service import run_service


@pytest.fixture(scope="module")
def reference(checkpoint):
    model, _, preprocess = open_clip.create_model_and_transforms("clip-tiny", pretrained=checkpoint)
    return model.eval(), preprocess, open_clip.get_tokenizer("clip-tiny")


@pytest.fixture(scope="module")
def ckpt_service(checkpoint):
    with run_service(tiny_settings(clip_pretrained=checkpoint, fast_decode=False)) as svc:
        yield svc


def _reference_image(reference, data: bytes) -> np.ndarray:
    model, preprocess, _ = reference
    with torch.inference_mode():
        features = model.encode_image(preprocess(Image.open(io.BytesIO(data))).unsqueeze(0))
    return torch.nn.functional.normalize(features, dim=-1)[0].numpy()


def _reference_text(reference, text: str) -> np.ndarray:
    model, _, tokenizer = reference
    with torch.inference_mode():
        features = model.encode_text(tokenizer([text]))
    return torch.nn.functional.normalize(features, dim=-1)[0].numpy()


def test_health_names_checkpoint_file(ckpt_service, checkpoint):
    _, body, _ = call(ckpt_service.base, "/health")
    assert body["pretrained"] == checkpoint and body["random_weights"] is False
    assert body["kernels"] == "onednn-packed"


@pytest.mark.parametrize("name", ["photo0.jpg", "photo3.jpg", "large.jpg"])
def test_image_vector_matches_open_clip(ckpt_service, image_server, reference, name):
    status, body, _ = call(ckpt_service.base, "/v1/embed/image", {"image_url": image_server.url(f"img/{name}")})
    assert status == 200
    expected = _reference_image(reference, image_server.files[name])
    np.testing.assert_allclose(body["embedding"], expected, atol=1e-4)


def test_batch_vectors_match_open_clip(ckpt_service, image_server, reference):
    names = ["photo1.jpg", "photo2.jpg", "large.jpg"]
    status, body, _ = call(
        ckpt_service.base, "/v1/embed/image-batch", {"image_urls": [image_server.url(f"img/{n}") for n in names]}
    )
    assert status == 200
    for result, name in zip(body["results"], names, strict=True):
        np.testing.assert_allclose(
            result["embedding"], _reference_image(reference, image_server.files[name]), atol=1e-4
        )


@pytest.mark.parametrize(
    "text",
    ["a photo of a cat", "!!! wow !!!", "Ünïcödé — 東京の写真", "word " * 200],  # the last is truncated
)
def test_text_vector_matches_open_clip(ckpt_service, reference, text):
    status, body, _ = call(ckpt_service.base, "/v1/embed/text", {"text": text})
    assert status == 200
    vector = np.asarray(body["embedding"])
    np.testing.assert_allclose(vector, _reference_text(reference, text), atol=1e-4)
    assert abs(np.linalg.norm(vector) - 1) < 1e-3


@pytest.mark.parametrize("model_name", ["clip-tiny", "ViT-B-32"])
def test_text_tower_skips_padding_with_same_vectors(model_name):
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(0)
    model = open_clip.create_model(model_name).eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    texts = ["a cat", "!", "a much longer caption about a dog running on a beach at sunset", "x " * 100]
    tokens = tokenizer(texts)
    tower = TextTower(model)
    assert tower.truncates
    with torch.inference_mode():
        np.testing.assert_allclose(tower(tokens).numpy(), model.encode_text(tokens).numpy(), atol=1e-5)
        # A batch of short texts only: the forward really runs over fewer positions.
        short = tokenizer(["a cat", "a dog"])
        np.testing.assert_allclose(tower(short).numpy(), model.encode_text(short).numpy(), atol=1e-5)


def test_embedder_loads_checkpoint_weights(checkpoint, reference):
    embedder = ClipEmbedder("clip-tiny", checkpoint, "cpu")
    model, _, _ = reference
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(embedder.model.state_dict()[name], tensor)


def test_fast_decode_stays_close_to_full_decode(reference, checkpoint):
    embedder = ClipEmbedder("clip-tiny", checkpoint, "cpu")
    from app.inference.decode import decode_image

    data = jpeg_bytes(1600, 1200, seed=5)
    full = embedder.encode_images([embedder.preprocess(decode_image(data, max_pixels=10**8))])[0]
    fast = embedder.encode_images([embedder.preprocess(decode_image(data, max_pixels=10**8, draft_size=64))])[0]
    assert float(np.dot(full, fast)) >= 0.99


def test_bucketed_batches_give_the_same_vectors(checkpoint):
    padded = ClipEmbedder("clip-tiny", checkpoint, "cpu", buckets=(4, 8))
    plain = ClipEmbedder("clip-tiny", checkpoint, "cpu")
    pixels = [torch.randn(3, 64, 64) for _ in range(3)]
    assert [padded.padded_size(n) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 9]
    np.testing.assert_allclose(padded.encode_images(pixels), plain.encode_images(pixels), atol=1e-5)


@pytest.mark.parametrize(
    ("compile", "device", "max_batch", "expected"),
    [(False, "cuda", None, ()), (True, "cuda", None, (1, 8, 16, 32, 64, 128, 256)), (True, "cpu", 20, (1, 8, 16, 20))],
)
def test_settings_compile_buckets(compile, device, max_batch, expected):
    settings = tiny_settings(engine_compile=compile, engine_max_batch=max_batch)
    assert settings.compile_buckets(device) == expected
