"""Pick the backend from configuration: the switch (and rollback) between pod and serverless."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, Self

from clip_client.config import ClientConfig
from clip_client.errors import ClipConfigError
from clip_client.pod import ClipPodClient
from clip_client.results import ImageResult, TextResult
from clip_client.retry import RetryPolicy
from clip_client.serverless import RunPodServerlessClipClient


class ClipClient(Protocol):
    """What both backends offer (the serverless one raises ClipNotSupportedError for all but image URLs)."""

    backend: str

    async def health(self) -> dict[str, object]: ...

    async def models(self) -> list[dict[str, object]]: ...

    async def model(self, name: str | None = None) -> dict[str, object]: ...

    async def embed_image(self, url: str) -> list[float]: ...

    async def embed_images(self, urls: Sequence[str]) -> list[ImageResult]: ...

    async def embed_text(self, text: str) -> list[float]: ...

    async def embed_texts(self, texts: Sequence[str]) -> list[TextResult]: ...

    async def embed_image_bytes(self, data: bytes, media_type: str | None = None) -> list[float]: ...

    async def embed_image_file(self, path: str | os.PathLike[str]) -> list[float]: ...

    async def max_batch_size(self) -> int: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


def make_clip_client(
    config: ClientConfig | None = None,
    *,
    retry: RetryPolicy | None = None,
    model: str | None = None,
    embedding_type: str | None = None,
) -> ClipClient:
    """Return the client of the configured backend (`ClientConfig.from_env()` when not given).

    `model` names the served model every request asks for (the pod's default when None), `embedding_type`
    the vectors' type (float32 when None; clip_client.vectors reads the others).
    """
    config = config or ClientConfig.from_env()
    if config.backend == "runpod_serverless":
        if model is not None or embedding_type is not None:
            raise ClipConfigError(
                "a model or an embedding type can be chosen on the pod backend only (CLIP_INFERENCE_BACKEND="
                "runpod_pod): the runpod_serverless backend (the legacy handler) serves one model, as float32"
            )
        config.require("runpod_endpoint_url", "runpod_api_key", "hmac_secret")
        return RunPodServerlessClipClient(
            config.runpod_endpoint_url or "",
            config.runpod_api_key or "",
            config.hmac_secret or "",
            timeout_s=config.serverless_timeout_s,
            retry=retry,
        )
    config.require("pod_base_url", "hmac_secret")
    return ClipPodClient(
        config.pod_base_url or "",
        config.hmac_secret or "",
        timeout_s=config.pod_timeout_s,
        retry=retry,
        model=model,
        embedding_type=embedding_type,
    )
