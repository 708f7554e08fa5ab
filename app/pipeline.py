"""The embedding use cases: URL → bytes → pixels → vector, and text → tokens → vector."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from app.download import ImageFetcher
from app.engine import Engine
from app.errors import ServiceError
from app.images import decode_image
from app.model import Embedder

ItemResult = np.ndarray | ServiceError


class EmbeddingPipeline:
    """Download and decode on a thread pool, then hand tensors to the batching engine."""

    def __init__(
        self,
        fetcher: ImageFetcher,
        embedder: Embedder,
        engine: Engine,
        cpu_pool: ThreadPoolExecutor,
        *,
        max_pixels: int,
        fast_decode: bool,
    ) -> None:
        self._fetcher = fetcher
        self._embedder = embedder
        self._engine = engine
        self._pool = cpu_pool
        self._max_pixels = max_pixels
        self._draft_size = embedder.info.image_size if fast_decode else None

    def pixels_from_bytes(self, data: bytes) -> torch.Tensor:
        """Decode and preprocess one image (blocking; runs on the CPU pool)."""
        image = decode_image(data, max_pixels=self._max_pixels, draft_size=self._draft_size)
        return self._embedder.preprocess(image)

    async def _prepare(self, url: str) -> torch.Tensor:
        data = await self._fetcher.fetch(url)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.pixels_from_bytes, data)

    async def embed_image(self, url: str) -> np.ndarray:
        """Embed one image; raise its ServiceError on failure."""
        pixels = await self._prepare(url)
        (vector,) = await self._engine.images.submit([pixels])
        return vector

    async def embed_images(self, urls: Sequence[str]) -> list[ItemResult]:
        """Embed many images: prepare all concurrently, then submit the good ones together."""
        prepared = await asyncio.gather(*(self._prepare(u) for u in urls), return_exceptions=True)
        for outcome in prepared:
            if isinstance(outcome, BaseException) and not isinstance(outcome, ServiceError):
                raise outcome
        good = [i for i, outcome in enumerate(prepared) if isinstance(outcome, torch.Tensor)]
        vectors = await self._engine.images.submit([prepared[i] for i in good]) if good else []
        results: list[ItemResult] = list(prepared)  # type: ignore[arg-type]
        for i, vector in zip(good, vectors, strict=True):
            results[i] = vector
        return results

    async def embed_text(self, text: str) -> np.ndarray:
        """Embed one text, tokenised off the event loop."""
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(self._pool, self._embedder.tokenize, text)
        (vector,) = await self._engine.texts.submit([tokens])
        return vector
