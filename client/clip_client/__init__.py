"""Client for the CLIP embedding service (no torch needed).

from clip_client import make_clip_client

async with make_clip_client() as clip:        # backend and URLs from the environment
    vector = await clip.embed_image("https://example.com/cat.jpg")
"""

from __future__ import annotations

from clip_client import signing
from clip_client.config import ClientConfig
from clip_client.errors import (
    ClipAuthError,
    ClipClientError,
    ClipConfigError,
    ClipImageFetchError,
    ClipInvalidRequestError,
    ClipNotSupportedError,
    ClipRequestError,
    ClipServerError,
    ClipTimeoutError,
    ClipUnavailableError,
)
from clip_client.factory import ClipClient, make_clip_client
from clip_client.inline import data_uri
from clip_client.pod import ClipPodClient, RunPodPodClipClient
from clip_client.results import ImageResult, ItemError, TextResult
from clip_client.retry import RetryPolicy
from clip_client.serverless import RunPodServerlessClipClient

__all__ = [
    "ClientConfig",
    "ClipAuthError",
    "ClipClient",
    "ClipClientError",
    "ClipConfigError",
    "ClipImageFetchError",
    "ClipInvalidRequestError",
    "ClipNotSupportedError",
    "ClipPodClient",
    "ClipRequestError",
    "ClipServerError",
    "ClipTimeoutError",
    "ClipUnavailableError",
    "ImageResult",
    "ItemError",
    "RetryPolicy",
    "RunPodPodClipClient",
    "RunPodServerlessClipClient",
    "TextResult",
    "data_uri",
    "make_clip_client",
    "signing",
]
