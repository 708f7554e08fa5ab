"""The pod backend: the always-on HTTP service (`/health`, `/v1/models`, `/v1/embed/*`), HMAC-signed requests.

`model`, `embedding_type` and `dimensions` given to the constructor go with every request; given to a
method, they override it for that call. None sends nothing, and the service uses its default model and
float32 vectors, whole. An integer type's vectors come back as lists of ints: `clip_client.vectors.unpack`
turns any of them back into float32.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import quote

import aiohttp

from clip_client import signing
from clip_client._tasks import bounded_map
from clip_client.config import first_secret
from clip_client.errors import ClipConfigError, ClipServerError
from clip_client.inline import data_uri, file_data_uri
from clip_client.results import ImageResult, ItemError, TextResult
from clip_client.retry import RetryPolicy
from clip_client.transport import Transport, TransportClient

R = TypeVar("R")
Options = dict[str, str | int | None]


def _vector(body: object, where: str) -> list[float]:
    vector = body.get("embedding") if isinstance(body, dict) else None
    if not isinstance(vector, list) or not vector:
        raise ClipServerError(f"{where}: the answer has no embedding")
    return vector


def _batch_items(body: object, count: int, where: str) -> list[tuple[list[float] | None, ItemError | None]]:
    """Read a batch answer's `results` into (embedding, error) per input, in input order."""
    items = body.get("results") if isinstance(body, dict) else None
    if not isinstance(items, list) or len(items) != count:
        raise ClipServerError(f"{where}: expected {count} results")
    outcomes: list[tuple[list[float] | None, ItemError | None] | None] = [None] * count
    for position, item in enumerate(items):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or outcomes[index] is not None:
            raise ClipServerError(f"{where}: result {position} has a bad index")
        error = item.get("error")
        if error:
            code = str(error.get("code", "")) if isinstance(error, dict) else ""
            message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
            outcomes[index] = (None, ItemError(code or "unknown", message))
        else:
            outcomes[index] = (_vector(item, where), None)
    return outcomes  # type: ignore[return-value]  # every slot was filled above


class ClipPodClient(TransportClient):
    """Async client of the pod service; one aiohttp session for its lifetime (`async with` or `aclose()`)."""

    backend = "runpod_pod"

    def __init__(
        self,
        base_url: str,
        secret: str,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 4,
        batch_size: int | None = None,
        clock: Callable[[], float] = time.time,
        trace_configs: list[aiohttp.TraceConfig] | None = None,
        model: str | None = None,
        embedding_type: str | None = None,
        dimensions: int | None = None,
    ) -> None:
        key = first_secret(secret)
        if not key:
            raise ClipConfigError("EMBEDDING_HMAC_SECRET is empty: the pod refuses unsigned requests")
        if not base_url.startswith(("http://", "https://")):
            raise ClipConfigError(f"base URL {base_url!r} must start with http:// or https://")
        if max_concurrency < 1 or (batch_size is not None and batch_size < 1):
            raise ValueError("max_concurrency and batch_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._secret = key
        self._max_concurrency = max_concurrency
        self._batch_size = batch_size
        self._clock = clock
        self._transport = Transport(timeout_s, retry or RetryPolicy(), trace_configs=trace_configs)
        self.options: Options = {"model": model, "embedding_type": embedding_type, "dimensions": dimensions}

    async def health(self) -> dict[str, object]:
        """Return the service's `/health` body; raise ClipUnavailableError while it is not ready."""
        body = (await self._transport.request("GET", f"{self.base_url}/health")).json_or_raise()
        if not isinstance(body, dict):
            raise ClipServerError("/health: the answer is not a JSON object")
        return body

    async def models(self) -> list[dict[str, object]]:
        """Return `GET /v1/models`'s entries: each served model's name, dimension, preprocessing, fingerprint."""
        body = (await self._transport.request("GET", f"{self.base_url}/v1/models")).json_or_raise()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ClipServerError("/v1/models: the answer has no data list")
        return [entry for entry in data if isinstance(entry, dict)]

    async def model(self, name: str | None = None) -> dict[str, object]:
        """Return one served model's entry of `/v1/models` (None: this client's model, else the default one)."""
        name = name or self._str_option("model")
        if name is None:
            found = [entry for entry in await self.models() if entry.get("default")]
            if not found:
                raise ClipServerError("/v1/models: no model is marked default")
            return found[0]
        answer = await self._transport.request("GET", f"{self.base_url}/v1/models/{quote(name, safe='/')}")
        body = answer.json_or_raise()
        if not isinstance(body, dict):
            raise ClipServerError(f"/v1/models/{name}: the answer is not a JSON object")
        return body

    async def embed_image(
        self, url: str, *, model: str | None = None, embedding_type: str | None = None, dimensions: int | None = None
    ) -> list[float]:
        """Return the embedding of the image at `url`."""
        options = self._options(model, embedding_type, dimensions)
        body = await self._post(signing.IMAGE_PATH, {"image_url": url}, signing.image_payload_id(url), options)
        return _vector(body, signing.IMAGE_PATH)

    async def embed_text(
        self, text: str, *, model: str | None = None, embedding_type: str | None = None, dimensions: int | None = None
    ) -> list[float]:
        """Return the embedding of `text`."""
        options = self._options(model, embedding_type, dimensions)
        body = await self._post(signing.TEXT_PATH, {"text": text}, signing.text_payload_id(text), options)
        return _vector(body, signing.TEXT_PATH)

    async def embed_image_bytes(
        self, data: bytes, media_type: str | None = None, *, model: str | None = None, embedding_type: str | None = None
    ) -> list[float]:
        """Return the embedding of an image given as bytes, sent inline (media type sniffed if not given)."""
        return await self.embed_image(data_uri(data, media_type), model=model, embedding_type=embedding_type)

    async def embed_image_file(
        self, path: str | os.PathLike[str], *, model: str | None = None, embedding_type: str | None = None
    ) -> list[float]:
        """Return the embedding of a local image file, sent inline; OSError when it cannot be read."""
        return await self.embed_image(await file_data_uri(path), model=model, embedding_type=embedding_type)

    async def embed_images(
        self,
        urls: Sequence[str],
        *,
        model: str | None = None,
        embedding_type: str | None = None,
        dimensions: int | None = None,
    ) -> list[ImageResult]:
        """Embed any number of images (URLs or data URIs): chunks of the server's `max_batch_size`, sent concurrently.

        Returns one result per URL in input order; a refused image is a failed result, while a
        chunk that fails as a whole (auth, unavailable after retries...) raises.
        """
        options = self._options(model, embedding_type, dimensions)
        return await self._batched(list(urls), lambda chunk: self._embed_chunk(chunk, options))

    async def embed_texts(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        embedding_type: str | None = None,
        dimensions: int | None = None,
    ) -> list[TextResult]:
        """Embed any number of texts, batched like `embed_images`; one result per text in input order."""
        options = self._options(model, embedding_type, dimensions)
        return await self._batched(list(texts), lambda chunk: self._embed_text_chunk(chunk, options))

    def _options(self, model: str | None, embedding_type: str | None, dimensions: int | None) -> Options:
        """Return this call's options: the ones given, else the client's."""
        given: Options = {"model": model, "embedding_type": embedding_type, "dimensions": dimensions}
        return {name: given[name] if given[name] is not None else value for name, value in self.options.items()}

    def _str_option(self, name: str) -> str | None:
        value = self.options.get(name)
        return value if isinstance(value, str) else None

    async def max_batch_size(self) -> int:
        """Return the chunk size: given at construction, or asked from `/health` once and kept."""
        if self._batch_size is None:
            size = (await self.health()).get("max_batch_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ClipServerError(f"/health: max_batch_size is {size!r}, not a positive integer")
            self._batch_size = size
        return self._batch_size

    async def _batched(self, items: list[str], send: Callable[[list[str]], Awaitable[list[R]]]) -> list[R]:
        if not items:
            return []
        size = await self.max_batch_size()
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        outcomes = await bounded_map(send, chunks, self._max_concurrency)
        return [result for chunk in outcomes for result in chunk]

    async def _embed_chunk(self, urls: list[str], options: Options) -> list[ImageResult]:
        body = await self._post(signing.BATCH_PATH, {"image_urls": urls}, signing.batch_payload_id(urls), options)
        items = _batch_items(body, len(urls), signing.BATCH_PATH)
        return [ImageResult(url, embedding=vector, error=error) for url, (vector, error) in zip(urls, items)]

    async def _embed_text_chunk(self, texts: list[str], options: Options) -> list[TextResult]:
        path = signing.TEXT_BATCH_PATH
        body = await self._post(path, {"texts": texts}, signing.text_batch_payload_id(texts), options)
        items = _batch_items(body, len(texts), path)
        return [TextResult(text, embedding=vector, error=error) for text, (vector, error) in zip(texts, items)]

    async def _post(self, path: str, body: dict[str, object], payload_id: str, options: Options) -> object:
        # Only the options set go out, and the signature covers exactly those (clip_client.signing).
        body = body | {name: value for name, value in options.items() if value is not None}
        payload_id = signing.options_payload_id(payload_id, options)

        def headers() -> dict[str, str]:
            # A fresh timestamp and nonce per attempt: a retry is never a replay.
            return signing.signed_headers(
                self._secret, "POST", path, payload_id, timestamp=int(self._clock()), nonce=signing.new_nonce()
            )

        answer = await self._transport.request("POST", self.base_url + path, body=body, headers=headers)
        return answer.json_or_raise()


# The devlog's name for the same class.
RunPodPodClipClient = ClipPodClient
