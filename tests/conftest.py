"""Shared fixtures: a local image server, generated images, and the real service (tiny model)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.support.data import jpeg_bytes, png_rgba_bytes, tiny_settings
from tests.support.imageserver import ImageServer
from tests.support.service import RunningService, run_service


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """Save a seeded tiny model's weights, as a user would save a fine-tuned checkpoint."""
    import open_clip
    import torch

    from app.inference.model import CONFIG_DIR

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
