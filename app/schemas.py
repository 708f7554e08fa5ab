"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# A hard cap for parsing; MAX_BATCH_SIZE (usually far lower) is enforced by the route.
PARSE_MAX_URLS = 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class EmbedImageRequest(_Strict):
    image_url: str = Field(min_length=1, max_length=8192, examples=["https://example.com/cat.jpg"])


class EmbedImageBatchRequest(_Strict):
    image_urls: list[str] = Field(min_length=1, max_length=PARSE_MAX_URLS)


class EmbedTextRequest(_Strict):
    text: str = Field(min_length=1, examples=["a photo of a cat"])


class EmbeddingResponse(BaseModel):
    embedding: list[float]
    dim: int
    model: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class BatchItem(BaseModel):
    index: int
    embedding: list[float] | None
    error: ErrorDetail | None


class BatchResponse(BaseModel):
    results: list[BatchItem]
    succeeded: int
    failed: int
    dim: int
    model: str


class HealthResponse(BaseModel):
    status: str
    model: str | None = None
    pretrained: str | None = None
    device: str | None = None
    dtype: str | None = None
    kernels: str | None = None
    dim: int | None = None
    max_batch_size: int
    auth: str
    random_weights: bool | None = None
    reason: str | None = None
    engine: dict[str, dict[str, int]] | None = None
