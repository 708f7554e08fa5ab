"""The legacy serverless job: `{"image_url", "timestamp", "signature"}` in, one embedding out.

Signed with the legacy message `image_url|timestamp` (`clip_client.signing.legacy_message`) and
checked by the service's own verifier (`RequestVerifier.verify_legacy`): any EMBEDDING_HMAC_SECRET
key, timestamps within AUTH_MAX_SKEW_S. There is no nonce in the legacy scheme, so no replay
protection beyond the timestamp window. Model, download and decode are the service's own
(`app.inference.loading`, `app.fetch.download`, `app.inference.decode`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from app.auth.verify import make_verifier
from app.errors import InvalidRequest, InvalidUrl, ServiceError
from app.fetch.download import ImageFetcher, make_fetcher
from app.fetch.urlchars import url_text_problem
from app.inference.decode import decode_image
from app.inference.loading import load_clip
from app.inference.model import Embedder
from app.settings import Settings

log = logging.getLogger("app.legacy")


def error_output(exc: ServiceError) -> dict[str, object]:
    return {"error": {"code": exc.code, "message": exc.message}}


class LegacyHandler:
    """One per worker process: the model is loaded once, in the constructor."""

    def __init__(
        self, settings: Settings, embedder: Embedder | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._embedder = embedder or load_clip(settings)
        self._verifier = make_verifier(settings, clock=clock)
        self._model_lock = threading.Lock()
        self._fetcher: ImageFetcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def dim(self) -> int:
        return self._embedder.info.dim

    async def handle(self, job: dict[str, object]) -> dict[str, object]:
        """Run one job; every failure is an `{"error": {"code", "message"}}` output, never an exception."""
        job_id = job.get("id")
        try:
            image_url = self._verified_url(job.get("input"), None if job_id is None else str(job_id))
            data = await self._fetcher_for_loop().fetch(image_url)
            vector = await asyncio.to_thread(self._embed, data)
        except ServiceError as exc:
            log.info("job %s failed: %s", job_id, exc.code)
            return error_output(exc)
        return {"embedding": vector.tolist(), "dim": int(vector.shape[0])}

    def _verified_url(self, payload: object, job_id: str | None) -> str:
        if not isinstance(payload, dict):
            raise InvalidRequest("input must be an object with image_url, timestamp and signature")
        image_url = payload.get("image_url")
        if not isinstance(image_url, str) or not image_url:
            raise InvalidRequest("input.image_url must be a non-empty string")
        problem = url_text_problem(image_url)
        if problem is not None:
            raise InvalidUrl(problem)
        # The job id stands for the request id: the refusal's log line carries it.
        self._verifier.verify_legacy(image_url, payload.get("timestamp"), payload.get("signature"), job_id)
        return image_url

    def _embed(self, data: bytes) -> np.ndarray:
        s = self._settings
        draft = self._embedder.info.image_size if s.fast_decode else None
        pixels = self._embedder.preprocess(decode_image(data, max_pixels=s.max_image_pixels, draft_size=draft))
        with self._model_lock:
            (row,) = self._embedder.encode_images([pixels])
        if isinstance(row, Exception):
            raise row
        return row

    def _fetcher_for_loop(self) -> ImageFetcher:
        """The aiohttp session belongs to one event loop; make a new fetcher if the loop changed."""
        loop = asyncio.get_running_loop()
        if self._fetcher is None or self._loop is not loop:
            self._fetcher, self._loop = make_fetcher(self._settings), loop
        return self._fetcher

    async def aclose(self) -> None:
        if self._fetcher is not None:
            await self._fetcher.aclose()
            self._fetcher = self._loop = None
