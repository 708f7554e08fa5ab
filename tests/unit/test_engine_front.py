"""A worker fed by an engine process prepares items as the engine's model would: the same payloads, the same tokens."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from app.engine.front import RemoteModel
from app.engine.wire import Ready
from app.inference.image_tower import ImageOptions
from app.inference.model import ClipEmbedder, ModelLoadError
from app.inference.payload import DecodedImage
from tests.support.photos import photo


def ready_of(embedder: ClipEmbedder, mode: str) -> Ready:
    cfg = embedder.preprocess_cfg
    # Through JSON, as the engine sends it: tuples come back as lists.
    listed = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    return Ready(0, 1, asdict(embedder.info), "clip-tiny", listed, mode, "pool", 32)


@pytest.mark.parametrize("mode", ["pil", "pil-uint8", "tensor"])
def test_engine_front_makes_the_engines_very_payloads_and_tokens(mode):
    embedder = ClipEmbedder("clip-tiny", "none", "cpu", images=ImageOptions(preprocess=mode))  # type: ignore[arg-type]
    front = RemoteModel(ready_of(embedder, mode))
    picture = photo(333, 250, seed=3)
    want, got = embedder.preprocess(picture), front.preprocess(picture)
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, want)
    else:
        assert isinstance(got, DecodedImage) and np.array_equal(got.pixels, want.pixels)
    assert torch.equal(front.tokenize("a photo of a cat"), embedder.tokenize("a photo of a cat"))
    assert front.info == embedder.info


def test_engine_front_refuses_a_transform_it_cannot_rebuild():
    embedder = ClipEmbedder("clip-tiny", "none", "cpu")
    ready = ready_of(embedder, "pil")
    moved = replace(ready, preprocess_cfg=ready.preprocess_cfg | {"interpolation": "bilinear"})
    with pytest.raises(ModelLoadError, match="cannot rebuild the engine's image transform"):
        RemoteModel(moved)
