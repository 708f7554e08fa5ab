"""The legacy backend: a RunPod serverless endpoint running `handler.py` (legacy signing).

Request: `POST {endpoint}/runsync` with `{"input": {"image_url", "timestamp", "signature"}}`, where
signature = HMAC-SHA256(secret, "image_url|timestamp"), and `Authorization: Bearer <RUNPOD_API_KEY>`.
Answer: `{"id", "status": "COMPLETED", "output": {"embedding", "dim"}}`, or `"status": "FAILED"`
with the handler's `{"code", "message"}` as `error`; a job still queued or running is polled at
`GET {endpoint}/status/{id}` until it ends or the timeout passes. Only images given by URL can be
embedded: the text and inline-image methods raise ClipNotSupportedError naming the pod backend.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import aiohttp

from clip_client import signing
from clip_client._tasks import bounded_map
from clip_client.codes import ErrorCode
from clip_client.config import first_secret
from clip_client.errors import (
    ClipAuthError,
    ClipConfigError,
    ClipNotSupportedError,
    ClipRequestError,
    ClipServerError,
    ClipTimeoutError,
    error_for,
)
from clip_client.results import ImageResult, ItemError, TextResult
from clip_client.retry import RetryPolicy
from clip_client.transport import Transport, TransportClient

_PENDING = frozenset({"IN_QUEUE", "IN_PROGRESS"})


def _strip_operation(url: str) -> str:
    url = url.rstrip("/")
    for suffix in ("/runsync", "/run"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def _job_error(raw: object) -> tuple[str, str]:
    """Read a FAILED job's error: the handler's {"code","message"} (maybe as JSON text) or RunPod's own."""
    if isinstance(raw, str):
        text = raw
        try:
            raw = json.loads(text)
        except ValueError:
            return ErrorCode.SERVER_ERROR, text
    if isinstance(raw, dict):
        if "code" in raw:
            return str(raw["code"]), str(raw.get("message", ""))
        if "error_message" in raw:  # the SDK's report of an exception inside the handler
            return ErrorCode.HANDLER_EXCEPTION, f"{raw.get('error_type', 'error')}: {raw['error_message']}"
    return ErrorCode.SERVER_ERROR, str(raw)


def _pod_only(method: str) -> ClipNotSupportedError:
    return ClipNotSupportedError(
        f"{method} needs the pod backend (CLIP_INFERENCE_BACKEND=runpod_pod): the runpod_serverless "
        "backend (the legacy handler) embeds images by URL only"
    )


class RunPodServerlessClipClient(TransportClient):
    """Async client of the legacy serverless endpoint; `embed_image` / `embed_images` only."""

    backend = "runpod_serverless"

    def __init__(
        self,
        endpoint_url: str,
        api_key: str,
        secret: str,
        *,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 4,
        poll_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        trace_configs: list[aiohttp.TraceConfig] | None = None,
    ) -> None:
        key = first_secret(secret)
        if not key:
            raise ClipConfigError("EMBEDDING_HMAC_SECRET is empty: the handler refuses unsigned requests")
        if not api_key:
            raise ClipConfigError("RUNPOD_API_KEY is empty")
        self.endpoint_url = _strip_operation(endpoint_url)
        self._secret = key
        self._max_concurrency = max_concurrency
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._transport = Transport(
            timeout_s, retry or RetryPolicy(), {"Authorization": f"Bearer {api_key}"}, trace_configs
        )

    async def health(self) -> dict[str, object]:
        raise _pod_only("health()")

    async def models(self) -> list[dict[str, object]]:
        raise _pod_only("models()")

    async def model(self, name: str | None = None) -> dict[str, object]:
        raise _pod_only("model()")

    async def embed_text(self, text: str) -> list[float]:
        raise _pod_only("embed_text()")

    async def embed_texts(self, texts: Sequence[str]) -> list[TextResult]:
        raise _pod_only("embed_texts()")

    async def embed_image_bytes(self, data: bytes, media_type: str | None = None) -> list[float]:
        raise _pod_only("embed_image_bytes()")

    async def embed_image_file(self, path: str | os.PathLike[str]) -> list[float]:
        raise _pod_only("embed_image_file()")

    async def max_batch_size(self) -> int:
        """Return 1: the handler embeds one image per job."""
        return 1

    async def embed_image(self, url: str) -> list[float]:
        """Return the embedding of the image at `url` (raises the handler's error)."""

        def body() -> dict[str, object]:
            timestamp = int(self._clock())
            message = signing.legacy_message(url, timestamp)
            signature = signing.sign(self._secret, message)
            return {"input": {"image_url": url, "timestamp": timestamp, "signature": signature}}

        job = (await self._transport.request("POST", f"{self.endpoint_url}/runsync", body=body)).json_or_raise()
        job = await self._until_done(job)
        return self._output(job)

    async def embed_images(self, urls: Sequence[str]) -> list[ImageResult]:
        """One job per URL (bounded concurrency); refused images are failed results, in input order."""

        async def one(url: str) -> ImageResult:
            try:
                return ImageResult(url, embedding=await self.embed_image(url))
            except ClipAuthError:
                raise
            except ClipRequestError as exc:
                return ImageResult(url, error=ItemError(exc.code, exc.message))

        return await bounded_map(one, list(urls), self._max_concurrency)

    async def _until_done(self, job: object) -> dict[str, object]:
        deadline = time.monotonic() + self._transport.timeout_s
        while isinstance(job, dict) and job.get("status") in _PENDING and "id" in job:
            if time.monotonic() > deadline:
                raise ClipTimeoutError(
                    f"job {job['id']} still {job['status']} after {self._transport.timeout_s:g}s", attempts=1
                )
            await self._transport.retry.sleep(self._poll_interval_s)
            answer = await self._transport.request("GET", f"{self.endpoint_url}/status/{job['id']}")
            job = answer.json_or_raise()
        if not isinstance(job, dict):
            raise ClipServerError("/runsync: the answer is not a JSON object")
        return job

    @staticmethod
    def _output(job: dict[str, object]) -> list[float]:
        status = job.get("status")
        output = job.get("output")
        # The handler logs a refusal's reason under the job's id.
        job_id = str(job["id"]) if isinstance(job.get("id"), str | int) else None
        if status == "COMPLETED" and isinstance(output, dict):
            if "error" in output:
                code, message = _job_error(output["error"])
                raise error_for(code, message, None, job_id)
            vector = output.get("embedding")
            if isinstance(vector, list) and vector:
                return vector
            raise ClipServerError("/runsync: the job's output has no embedding")
        if status == "FAILED":
            code, message = _job_error(job.get("error"))
            raise error_for(code, message, None, job_id)
        if status == "TIMED_OUT":
            raise ClipTimeoutError(f"job {job.get('id')} timed out on the endpoint", attempts=1)
        raise ClipServerError(f"/runsync: job ended with status {status!r}")
