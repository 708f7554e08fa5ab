"""Generated photos: what a camera's JPEG looks like to a decoder and a resize, without shipping one."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Return an RGB picture with a photo's structure: a lit gradient, objects with edges, texture and grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = rng.uniform(0.2, 0.8, 2)
    sky = np.stack(
        [c0 + (c1 - c0) * (light[0] * x / width + light[1] * y / height) for c0, c1 in rng.uniform(20, 235, (3, 2))],
        axis=-1,
    )
    img = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(30):
        cx, cy = rng.uniform(0, 1, 2) * (width, height)
        rx, ry = rng.uniform(0.02, 0.3, 2) * (width, height)
        x0, x1, y0, y1 = cx - rx, cx + rx, cy - ry, cy + ry
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour, outline=tuple(255 - c for c in colour), width=max(1, width // 200))
    img = img.filter(ImageFilter.GaussianBlur(radius=max(0.5, width / 800)))
    # Texture (foliage, fabric) in one region, and sensor grain everywhere.
    pixels = np.asarray(img, dtype=np.float32)
    texture = rng.normal(0, 25, (height, width, 1)) * (x[..., None] < width * rng.uniform(0.3, 0.7))
    grain = rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(pixels + texture + grain, 0, 255).astype(np.uint8))


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90, **save: object) -> bytes:
    """Return a generated photo as a JPEG (`save`: more of Pillow's JPEG options, e.g. subsampling=0)."""
    buf = io.BytesIO()
    photo(width, height, seed).save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


def corrupt_scan(data: bytes) -> bytes:
    """Return a JPEG with the same headers and random bytes for its entropy-coded data: it passes every header check."""
    sos = data.index(b"\xff\xda")
    return data[: sos + 20] + np.random.default_rng(0).bytes(5000) + b"\xff\xd9"
