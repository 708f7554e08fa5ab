"""`python -m tests.support.gated_model`: `python -m app` whose model holds each image batch while a file exists.

The seam of the engine process's tests (app.__main__.main's `embedder_factory`): while GATE_FILE exists,
an image batch waits on the model thread, so that a test can have items in the engine, and more queued
behind them, for as long as it needs; removing the file lets every batch run. GATE_FILE.held appears once
a batch waits there. The model is the real one.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.__main__ import main
from app.inference.loading import load_clip
from app.inference.model import Embedder
from app.inference.payload import ImagePayload
from app.inference.readback import VectorRows
from app.settings import Settings


class GatedModel:
    """The configured model, whose image batches wait while `gate` exists."""

    def __init__(self, inner: Embedder, gate: Path) -> None:
        self._inner = inner
        self._gate = gate
        self.info = inner.info
        self.preprocess_cfg = getattr(inner, "preprocess_cfg", None)  # the workers rebuild its transform

    def preprocess(self, image: Image.Image) -> ImagePayload:
        return self._inner.preprocess(image)

    def tokenize(self, text: str) -> torch.Tensor:
        return self._inner.tokenize(text)

    def encode_texts(self, tokens: list[torch.Tensor]) -> np.ndarray:
        return self._inner.encode_texts(tokens)

    def encode_images(self, pixels: list[ImagePayload]) -> VectorRows:
        if self._gate.exists():
            self._gate.with_suffix(".held").touch()
        while self._gate.exists():
            time.sleep(0.01)
        return self._inner.encode_images(pixels)


def gated_clip(settings: Settings) -> GatedModel:
    """Load the configured model; hold its image batches while GATE_FILE exists."""
    return GatedModel(load_clip(settings), Path(os.environ["GATE_FILE"]))


if __name__ == "__main__":
    sys.exit(main(embedder_factory=gated_clip))
