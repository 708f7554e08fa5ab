"""The legacy serverless job: `{"image_url", "timestamp", "signature"}` in, one embedding out.

Signed with the legacy message `image_url|timestamp` (`clip_client.signing.legacy_message`), any
of the comma-separated EMBEDDING_HMAC_SECRET keys accepted, timestamps within AUTH_MAX_SKEW_S.
There is no nonce in the legacy scheme, so no replay protection beyond the timestamp window.
Download, decode and the model are the service's own (`app.fetch.download`, `app.inference.decode`, `app.inference.model`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable

import aiohttp
import numpy as np
from clip_client.signing import legacy_message, signature_matches

from app.errors import InvalidRequest, ServiceError, Unauthorized
from app.fetch.download import ImageFetcher, make_session
from app.fetch.urlguard import GuardedResolver, make_guard
from app.inference.decode import decode_image
from app.inference.model import ClipEmbedder, Embedder
from app.settings import Settings

log = logging.getLogger("app.legacy")

_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
# Checked before comparing: compare_digest raises TypeError on non-ASCII text.
_SIGNATURE_RE = re.compile(r"\s*[0-9A-Fa-f]{64}\s*")
_UNAUTHORIZED = "missing or invalid signature"


def load_embedder(settings: Settings) -> Embedder:
    """Load and warm the configured model (what the service's lifespan does, without the engine)."""
    embedder = ClipEmbedder(settings.clip_model, settings.clip_pretrained, settings.device)
    embedder.warm_up()
    return embedder


def error_output(exc: ServiceError) -> dict[str, object]:
    return {"error": {"code": exc.code, "message": exc.message}}


class LegacyHandler:
    """One per worker process: the model is loaded once, in the constructor."""

    def __init__(
        self, settings: Settings, embedder: Embedder | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._embedder = embedder or load_embedder(settings)
        self._clock = clock
        secret = settings.embedding_hmac_secret
        keys = secret.get_secret_value().split(",") if secret is not None else []
        self._keys = [k.strip() for k in keys if k.strip()]
        self._model_lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._fetcher: ImageFetcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def dim(self) -> int:
        return self._embedder.info.dim

    async def handle(self, job: dict[str, object]) -> dict[str, object]:
        """Run one job; every failure is an `{"error": {"code", "message"}}` output, never an exception."""
        try:
            image_url = self._verified_url(job.get("input"))
            data = await self._fetcher_for_loop().fetch(image_url)
            vector = await asyncio.to_thread(self._embed, data)
        except ServiceError as exc:
            log.info("job %s failed: %s", job.get("id"), exc.code)
            return error_output(exc)
        return {"embedding": vector.tolist(), "dim": int(vector.shape[0])}

    def _verified_url(self, payload: object) -> str:
        if not isinstance(payload, dict):
            raise InvalidRequest("input must be an object with image_url, timestamp and signature")
        image_url, timestamp, signature = (payload.get(k) for k in ("image_url", "timestamp", "signature"))
        if not isinstance(image_url, str) or not image_url:
            raise InvalidRequest("input.image_url must be a non-empty string")
        if self._settings.allow_insecure_auth:
            return image_url
        well_formed = isinstance(timestamp, int | str) and not isinstance(timestamp, bool)
        if not well_formed or not _TIMESTAMP_RE.fullmatch(str(timestamp)):
            raise Unauthorized(_UNAUTHORIZED)
        timestamp = str(timestamp)
        if abs(int(self._clock()) - int(timestamp)) > self._settings.auth_max_skew_s:
            raise Unauthorized(_UNAUTHORIZED)
        if not isinstance(signature, str) or not _SIGNATURE_RE.fullmatch(signature):
            raise Unauthorized(_UNAUTHORIZED)
        message = legacy_message(image_url, timestamp)
        # Check every key so the time taken does not say which one matched.
        if not any([signature_matches(key, message, signature) for key in self._keys]):  # noqa: C419
            raise Unauthorized(_UNAUTHORIZED)
        return image_url

    def _embed(self, data: bytes) -> np.ndarray:
        s = self._settings
        draft = self._embedder.info.image_size if s.fast_decode else None
        pixels = self._embedder.preprocess(decode_image(data, max_pixels=s.max_image_pixels, draft_size=draft))
        with self._model_lock:
            return self._embedder.encode_images([pixels])[0]

    def _fetcher_for_loop(self) -> ImageFetcher:
        """The aiohttp session belongs to one event loop; make a new one if the loop changed."""
        loop = asyncio.get_running_loop()
        if self._fetcher is None or self._loop is not loop:
            s = self._settings
            guard = make_guard(s)
            self._session = make_session(s.download_concurrency, GuardedResolver(guard))
            self._fetcher = ImageFetcher(
                self._session,
                guard,
                max_bytes=s.max_image_size_bytes,
                timeout_s=s.image_download_timeout_s,
                concurrency=s.download_concurrency,
            )
            self._loop = loop
        return self._fetcher

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = self._fetcher = self._loop = None
