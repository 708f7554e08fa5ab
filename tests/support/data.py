"""Test data and settings: generated images and the tiny model's settings."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from app.settings import Settings
from tests.support.api import SECRET


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


# The environment of a `python -m app` child process on the tiny test model (add what a test changes).
TINY_APP_ENV = {
    "EMBEDDING_HMAC_SECRET": SECRET,
    "CLIP_MODEL": "clip-tiny",
    "CLIP_PRETRAINED": "none",
    "DEVICE": "cpu",
    "ALLOW_PRIVATE_URLS": "1",
    "HF_HUB_OFFLINE": "1",
}
