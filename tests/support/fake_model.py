"""A stand-in model with a known cost, for tests of the engine and the lifecycle."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
from PIL import Image

from app.inference.model import ModelInfo

DIM = 8


class FakeEmbedder:
    """Vectors are a fixed function of the input; every batch size is recorded."""

    def __init__(self, t0: float = 0.0, t1: float = 0.0, gate: threading.Event | None = None) -> None:
        self.info = ModelInfo("fake", "none", "cpu", "float32", DIM, image_size=16, context_length=77)
        self.t0, self.t1 = t0, t1
        self.gate = gate
        self.image_batches: list[int] = []
        self.text_batches: list[int] = []
        self.running = threading.Event()
        self.threads: set[str] = set()  # names of the threads that ran batches
        self.tokenized_on: list[str] = []  # name of the thread that tokenised each text

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        small = image.resize((4, 4))
        return torch.from_numpy(np.asarray(small, dtype=np.float32).copy())

    def tokenize(self, text: str) -> torch.Tensor:
        self.tokenized_on.append(threading.current_thread().name)
        return torch.tensor([ord(c) for c in text[:DIM].ljust(DIM)], dtype=torch.float32)

    def _run(self, rows: list[torch.Tensor], record: list[int]) -> np.ndarray:
        self.running.set()
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.t0 + self.t1 * len(rows))
        record.append(len(rows))
        vectors = np.stack([r.flatten()[:DIM].numpy() + 1.0 for r in rows]).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def encode_images(self, pixels: list[torch.Tensor]) -> np.ndarray:
        return self._run(pixels, self.image_batches)

    def encode_texts(self, tokens: list[torch.Tensor]) -> np.ndarray:
        return self._run(tokens, self.text_batches)
