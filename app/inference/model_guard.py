"""The model as the engine runs it: timed, counted, and split in halves when the accelerator runs out of memory.

On `torch.cuda.OutOfMemoryError` the batch's memory is freed, the batch is split in half and each half
is retried, down to single items; an item that fails even alone gets `Overloaded` while the other
items of its batch succeed, and the engine keeps running. An item's own error (an image that cannot be
decoded) comes back in its row and fails that item alone.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from app.errors import Overloaded
from app.inference.model import Embedder, ModelInfo
from app.inference.payload import ImagePayload
from app.inference.readback import PendingVectors, VectorRows
from app.ops.metrics import Metrics

log = logging.getLogger("app.inference.model")

P = TypeVar("P")
ItemOutcome = np.ndarray | Exception
RunBatch = Callable[[list[P]], np.ndarray | Sequence[np.ndarray | Exception]]


def free_accelerator_memory() -> None:
    """Release what a failed forward pass left behind (cached CUDA blocks, unreachable tensors)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_splitting_on_oom(
    run: RunBatch[P], payloads: list[P], on_oom: Callable[[int], None] = lambda n: None
) -> list[ItemOutcome]:
    """Run `payloads` through `run`; on out-of-memory, retry in halves; return one outcome per payload."""
    try:
        return list(run(payloads))
    except torch.cuda.OutOfMemoryError:
        pass  # leave the except block first, so the traceback's references to tensors are dropped
    return split_after_oom(run, payloads, on_oom)


def split_after_oom(
    run: RunBatch[P], payloads: list[P], on_oom: Callable[[int], None] = lambda n: None
) -> list[ItemOutcome]:
    """Free what the failed pass left, then run the payloads in halves (each split again on out-of-memory)."""
    on_oom(len(payloads))
    free_accelerator_memory()
    if len(payloads) == 1:
        return [Overloaded("out of accelerator memory even for this item alone; retry later")]
    mid = len(payloads) // 2
    return run_splitting_on_oom(run, payloads[:mid], on_oom) + run_splitting_on_oom(run, payloads[mid:], on_oom)


class _TimedPending:
    """A batch in flight; its forward time and size are recorded once its vectors are back."""

    def __init__(self, pending: PendingVectors, done: Callable[[], None]) -> None:
        self._pending = pending
        self._done = done

    def wait(self) -> VectorRows:
        try:
            return self._pending.wait()
        finally:
            self._done()


class GuardedEmbedder:
    """Wrap an Embedder for the engine: OOM splitting, forward time and batch size metrics."""

    def __init__(self, embedder: Embedder, metrics: Metrics, model: str | None = None) -> None:
        self.inner = embedder
        self.info: ModelInfo = embedder.info
        self._metrics = metrics
        self._model = model or embedder.info.served_name  # the `model` label of the per-model series

    def preprocess(self, image: Image.Image) -> ImagePayload:
        return self.inner.preprocess(image)

    def tokenize(self, text: str) -> torch.Tensor:
        return self.inner.tokenize(text)

    def encode_images(self, pixels: list[ImagePayload]) -> list[ItemOutcome]:
        return self._run("images", self.inner.encode_images, pixels)

    def start_images(self, pixels: list[ImagePayload]) -> _TimedPending | list[ItemOutcome]:
        """Start a batch and return while the device runs it (ENGINE_OVERLAP); a model that cannot runs it now."""
        start: Callable[[list[ImagePayload]], PendingVectors] | None = getattr(self.inner, "start_images", None)
        if start is None:
            return self.encode_images(pixels)
        started = time.perf_counter()
        try:
            pending = start(pixels)
        except torch.cuda.OutOfMemoryError:
            pass  # as in run_splitting_on_oom: out of the except block first
        else:
            return _TimedPending(pending, lambda: self._observe("images", started, len(pixels)))
        outcomes = split_after_oom(self.inner.encode_images, pixels, lambda n: self._oom("images", n))
        self._observe("images", started, len(pixels))
        return outcomes

    def encode_texts(self, tokens: list[torch.Tensor]) -> list[ItemOutcome]:
        return self._run("texts", self.inner.encode_texts, tokens)

    def _run(self, queue: str, run: RunBatch[P], payloads: list[P]) -> list[ItemOutcome]:
        started = time.perf_counter()
        outcomes = run_splitting_on_oom(run, payloads, lambda n: self._oom(queue, n))
        self._observe(queue, started, len(payloads))
        return outcomes

    def _observe(self, queue: str, started: float, size: int) -> None:
        seconds = time.perf_counter() - started
        m = self._metrics
        m.stage_seconds.labels("forward").observe(seconds)
        m.batch_size.labels(queue).observe(size)
        m.model_forward_seconds.labels(self._model, queue).observe(seconds)
        m.model_batch_size.labels(self._model, queue).observe(size)

    def _oom(self, queue: str, size: int) -> None:
        self._metrics.oom.inc()
        log.warning("out of accelerator memory on a %s batch of %d: freeing and splitting", queue, size)
