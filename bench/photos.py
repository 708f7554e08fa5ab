"""Photos for the image-path benchmarks: the real ones of a folder when it has them, generated ones otherwise."""

from __future__ import annotations

import glob
import io
import os

import numpy as np
from PIL import Image


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def generated_1mp(count: int = 16) -> list[bytes]:
    """Return `count` 1280x960 JPEGs of smooth colour and grain (what gpu_check.sh wrote before)."""
    rng = np.random.default_rng(0)
    photos = []
    for _ in range(count):
        small = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((1280, 960), Image.BICUBIC)
        noisy = np.asarray(small, dtype=np.int16) + rng.integers(-12, 12, (960, 1280, 3))
        photos.append(_jpeg(np.clip(noisy, 0, 255).astype(np.uint8), 90))
    return photos


def tiny(count: int = 8) -> list[bytes]:
    """Return `count` 64x48 noisy JPEGs, as bench.overhead's tiny_photos writes them."""
    rng = np.random.default_rng(0)
    return [_jpeg((rng.random((48, 64, 3)) * 255).astype(np.uint8), 85) for _ in range(count)]


def from_folder(folder: str, pattern: str) -> list[bytes]:
    """Return the bytes of the files of `folder` matching `pattern`, in name order."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def write(folder: str, photos: list[bytes], prefix: str) -> None:
    """Write photos as `prefix`-NN.jpg files (for the static server and the upload load)."""
    os.makedirs(folder, exist_ok=True)
    for i, data in enumerate(photos):
        with open(os.path.join(folder, f"{prefix}-{i:02d}.jpg"), "wb") as f:
            f.write(data)
