"""Shared fixtures: a local image server, generated images, and the real service (tiny model)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from app.settings import Settings
from tests.support.api import SECRET
from tests.support.imageserver import ImageServer
from tests.support.service import RunningService, run_service


def jpeg_bytes(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """Return a JPEG of smooth random colour so that every seed embeds differently."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((width, height), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_rgba_bytes(width: int = 80, height: int = 60) -> bytes:
    img = Image.new("RGBA", (width, height), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, width // 2, height))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def tiny_settings(**overrides: object) -> Settings:
    """Settings for the tiny test model, signed requests, and private URLs allowed."""
    values: dict[str, object] = {
        "embedding_hmac_secret": SECRET,
        "clip_model": "clip-tiny",
        "clip_pretrained": "none",
        "device": "cpu",
        "allow_private_urls": True,
        "image_download_timeout_s": 3,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """Save a seeded tiny model's weights, as a user would save a fine-tuned checkpoint."""
    import open_clip
    import torch

    from app.model import CONFIG_DIR

    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(1234)
    model = open_clip.create_model("clip-tiny")
    path = tmp_path_factory.mktemp("ckpt") / "clip-tiny.pt"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        for seed in range(6):
            server.files[f"photo{seed}.jpg"] = jpeg_bytes(160 + 16 * seed, 120 + 8 * seed, seed)
        server.files["large.jpg"] = jpeg_bytes(1024, 768, 42)
        server.files["rgba.png"] = png_rgba_bytes()
        server.files["page.html"] = b"<html><body>not an image</body></html>"
        server.files["random.jpg"] = np.random.default_rng(1).bytes(5000)
        server.files["truncated.jpg"] = jpeg_bytes(300, 200, 9)[:700]
        yield server


@pytest.fixture(scope="session")
def service() -> Iterator[RunningService]:
    with run_service(tiny_settings()) as running:
        yield running
