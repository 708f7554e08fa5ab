"""The embedding use cases: URL (or data URI, or uploaded bytes) → bytes → pixels → vector, and text → tokens → vector.

Every request is admitted whole or refused (`Admission`), gets a deadline (REQUEST_TIMEOUT_S) after
which its items still queued are dropped, and is answered from the embedding cache when it can.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from app.errors import ServiceError
from app.fetch.download import ImageFetcher
from app.inference.cache import TieredCache, image_key, text_key
from app.inference.decode import decode_image
from app.inference.engine import EngineLike
from app.inference.jpeg_route import engine_jpeg
from app.inference.model import ItemPreparer
from app.inference.payload import ImagePayload
from app.ops.admission import Admission
from app.ops.metrics import Metrics

ItemResult = np.ndarray | ServiceError
# Texts up to this many characters are tokenised on the event loop: a hop to the pool costs the loop
# more than tokenising a caption, and the GIL keeps the pool thread from running beside the loop anyway
# (figures in docs/performance.md).
INLINE_TOKENIZE_CHARS = 128
# Images up to this many bytes are hashed on the event loop when a shared cache is asked: hashing them
# costs the loop less than the extra hop to the pool would (figures in docs/performance.md).
INLINE_HASH_BYTES = 16 * 1024


@dataclass(slots=True)
class _Prepared:
    """One downloaded image: its cached vector, or what the engine computes it from."""

    key: str | None
    pixels: ImagePayload | None = None
    vector: np.ndarray | None = None


class EmbeddingPipeline:
    """Download and decode on a thread pool, then hand payloads to the batching engine (in this process, or an
    engine process's: `engine` is the seam)."""

    def __init__(
        self,
        fetcher: ImageFetcher,
        embedder: ItemPreparer,
        engine: EngineLike,
        cpu_pool: ThreadPoolExecutor,
        *,
        max_pixels: int,
        fast_decode: bool,
        jpeg_decode: str = "pool",
        request_timeout_s: float = 60.0,
        admission: Admission | None = None,
        metrics: Metrics | None = None,
        cache: TieredCache | None = None,
        model: str | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._embedder = embedder
        self._engine = engine
        self._pool = cpu_pool
        self._max_pixels = max_pixels
        self._draft_size = embedder.info.image_size if fast_decode else None
        self._engine_jpeg = jpeg_decode == "engine"
        self._timeout_s = request_timeout_s
        self._admission = admission or Admission(limit=sys.maxsize)
        self._metrics = metrics or Metrics()
        self._cache = cache
        self._model = model or embedder.info.served_name  # the `model` label of the per-model series

    def pixels_from_bytes(self, data: bytes) -> ImagePayload:
        """Decode and preprocess one image, or check a JPEG for the engine to decode (blocking; runs on the CPU pool)."""
        if self._engine_jpeg:
            encoded = engine_jpeg(data, max_pixels=self._max_pixels)
            if encoded is not None:
                return encoded
        image = decode_image(data, max_pixels=self._max_pixels, draft_size=self._draft_size)
        return self._embedder.preprocess(image)

    def _lookup_or_decode(self, data: bytes, decode: bool) -> _Prepared:
        """Hash, look up in this process, and on a miss decode unless told not to (blocking; CPU pool)."""
        key = image_key(data) if self._cache is not None else None
        if key is not None and self._cache is not None:
            cached = self._cache.get_local(key)
            if cached is not None:
                self._count_cache("image", hit=True)
                return _Prepared(key, vector=cached)
        if not decode:
            return _Prepared(key)
        if key is not None:
            self._count_cache("image", hit=False)
        return _Prepared(key, pixels=self._decode(data))

    def _decode(self, data: bytes) -> ImagePayload:
        started = time.perf_counter()
        pixels = self.pixels_from_bytes(data)
        self._metrics.stage_seconds.labels("decode").observe(time.perf_counter() - started)
        return pixels

    async def _prepare(self, source: str | bytes) -> _Prepared:
        """Prepare an image from its URL (or data URI), or from its bytes (an upload)."""
        if isinstance(source, bytes):
            data = source
        else:
            started = time.perf_counter()
            data = await self._fetcher.fetch(source)
            self._metrics.stage_seconds.labels("download").observe(time.perf_counter() - started)
            self._metrics.download_bytes.inc(len(data))
        loop = asyncio.get_running_loop()
        shared = self._cache is not None and self._cache.shared is not None
        if not shared:
            return await loop.run_in_executor(self._pool, self._lookup_or_decode, data, True)
        assert self._cache is not None
        # A small image is hashed here and decoded while the shared store is asked (a hit drops the
        # pixels): the lookup adds no wait, and decoding is its only hop. A large one is hashed on the
        # pool and decoded only when the store misses.
        small = len(data) <= INLINE_HASH_BYTES
        if small:
            prepared = self._lookup_or_decode(data, False)
        else:
            prepared = await loop.run_in_executor(self._pool, self._lookup_or_decode, data, False)
        if prepared.vector is not None or prepared.key is None:
            return prepared
        decoding = loop.run_in_executor(self._pool, self._decode, data) if small else None
        if decoding is not None:
            decoding.add_done_callback(_consume)  # no one may wait for it: a hit, or a cancelled request
        vector = await self._cache.get_shared(prepared.key)
        self._count_cache("image", hit=vector is not None)
        if vector is not None:
            return _Prepared(prepared.key, vector=vector)
        pixels = await (decoding or loop.run_in_executor(self._pool, self._decode, data))
        return _Prepared(prepared.key, pixels=pixels)

    async def _compute(self, prepared: _Prepared, deadline: float, caller: object | None = None) -> np.ndarray:
        if prepared.vector is not None:
            return prepared.vector
        assert prepared.pixels is not None
        (vector,) = await self._engine.images.submit([prepared.pixels], deadline, caller)
        if prepared.key is not None and self._cache is not None:
            self._cache.put(prepared.key, vector)
        return vector

    async def embed_image(self, url: str) -> np.ndarray:
        """Embed one image; raise its ServiceError on failure."""
        with self._admission.admit(1):
            deadline = time.monotonic() + self._timeout_s
            with self._engine.images.expecting(1):
                prepared = await self._prepare(url)
            vector = await self._compute(prepared, deadline)
        self._count("image", 1)
        return vector

    async def embed_images(self, urls: Sequence[str | bytes]) -> list[ItemResult]:
        """Embed many images (URLs, data URIs or uploaded bytes): prepare all concurrently, then queue
        the ones to compute together.

        Each item succeeds or fails on its own; results keep the input order.
        """
        with self._admission.admit(len(urls)):
            deadline = time.monotonic() + self._timeout_s
            with self._engine.images.expecting(len(urls)):
                prepared = await asyncio.gather(*(self._prepare(u) for u in urls), return_exceptions=True)
            _raise_unexpected(prepared)
            # All submissions start in the same loop turn, so they reach the engine's queue together,
            # and as one caller: the engine's waves count requests, not images.
            caller = object()
            computed = await asyncio.gather(
                *(self._compute(p, deadline, caller) for p in prepared if isinstance(p, _Prepared)),
                return_exceptions=True,
            )
            _raise_unexpected(computed)
        vectors = iter(computed)
        results: list[ItemResult] = [next(vectors) if isinstance(p, _Prepared) else p for p in prepared]  # type: ignore[misc]
        self._count_vectors("image", results)
        return results

    async def embed_text(self, text: str) -> np.ndarray:
        """Embed one text; a long one is tokenised off the event loop."""
        with self._admission.admit(1):
            vector = await self._text_vector(text, time.monotonic() + self._timeout_s)
        self._count("text", 1)
        return vector

    async def embed_texts(self, texts: Sequence[str]) -> list[ItemResult]:
        """Embed many texts, queued together as one caller; results keep the input order."""
        with self._admission.admit(len(texts)):
            deadline = time.monotonic() + self._timeout_s
            caller = object()
            outcomes = await asyncio.gather(
                *(self._text_vector(t, deadline, caller) for t in texts), return_exceptions=True
            )
            _raise_unexpected(outcomes)
        results: list[ItemResult] = list(outcomes)  # type: ignore[arg-type]
        self._count_vectors("text", results)
        return results

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Return how many tokens the model sees of each text: start and end markers in, the context at most."""
        loop = asyncio.get_running_loop()
        count = getattr(self._embedder, "count_tokens", None) or self._nonzero_tokens
        counts = []
        for text in texts:
            if len(text) <= INLINE_TOKENIZE_CHARS:
                counts.append(count(text))
            else:
                counts.append(await loop.run_in_executor(self._pool, count, text))
        return counts

    def _nonzero_tokens(self, text: str) -> int:
        """Count the ids before the padding of a tokenizer that pads with 0 (open_clip's own)."""
        return int(torch.count_nonzero(self._embedder.tokenize(text)))

    async def _text_vector(self, text: str, deadline: float, caller: object | None = None) -> np.ndarray:
        key = text_key(text) if self._cache is not None else None
        vector = await self._cache.get(key) if key is not None and self._cache is not None else None
        if key is not None:
            self._count_cache("text", hit=vector is not None)
        if vector is None:
            tokens = await self._tokenize(text)
            (vector,) = await self._engine.texts.submit([tokens], deadline, caller)
            if key is not None and self._cache is not None:
                self._cache.put(key, vector)
        return vector

    def _count_vectors(self, kind: str, results: Sequence[ItemResult]) -> None:
        # Failed items are counted by the request that answers them (app.api.observe), once each.
        self._count(kind, sum(1 for r in results if not isinstance(r, ServiceError)))

    def _count(self, kind: str, vectors: int) -> None:
        self._metrics.embeddings.labels(kind).inc(vectors)
        self._metrics.model_embeddings.labels(self._model, kind).inc(vectors)

    async def aclose(self) -> None:
        """Wait for this pipeline's cache writes still running (app.inference.cache.TieredCache.aclose)."""
        if self._cache is not None:
            await self._cache.aclose()

    async def _tokenize(self, text: str) -> torch.Tensor:
        if len(text) <= INLINE_TOKENIZE_CHARS:
            return self._embedder.tokenize(text)
        with self._engine.texts.expecting(1):
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._embedder.tokenize, text)

    def _count_cache(self, kind: str, *, hit: bool) -> None:
        (self._metrics.cache_hits if hit else self._metrics.cache_misses).labels(kind).inc()


def _consume(future: asyncio.Future[ImagePayload]) -> None:
    """Mark a decode's error as retrieved, so that one no one waits for is not logged as unhandled."""
    if not future.cancelled():
        future.exception()


def _raise_unexpected(outcomes: Sequence[object]) -> None:
    """Re-raise the first outcome that is an exception but not a ServiceError (a bug, not a bad item)."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, ServiceError):
            raise outcome
