"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import builtins
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app.fetch.urlchars import url_text_problem
from app.inference.outputs import EmbeddingType, OutputSpec

# The error type of a refused URL; the 422's code is then `invalid_url` (app.api.errors).
INVALID_URL_ERROR = "invalid_url"


def _printable_url(url: str) -> str:
    problem = url_text_problem(url)
    if problem is not None:
        raise PydanticCustomError(INVALID_URL_ERROR, problem)
    return url


# An image URL or data URI, refused at once when it holds what yarl would drop or rewrite (app.fetch.urlchars).
ImageUrl = Annotated[str, AfterValidator(_printable_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


_TYPES = "`float32` (default), `float16`, `int8`, `uint8`, `binary` or `ubinary`: docs/api.md#output-types"


class OutputOptions(_Strict):
    """Which model embeds, and what comes back: the options every embedding endpoint takes (docs/api.md)."""

    model: str | None = Field(
        None, description="A served model's name or alias (GET /v1/models); unset: the default model", max_length=200
    )
    embedding_type: EmbeddingType | None = Field(None, description=f"The vectors' type: {_TYPES}")
    dimensions: int | None = Field(
        None, description="Truncate to this many dimensions and renormalise (matryoshka-trained models only)"
    )

    def output(self) -> OutputSpec:
        """Return the type and length asked for."""
        return OutputSpec(self.embedding_type or "float32", self.dimensions)

    def signed_options(self) -> dict[str, str | int | None]:
        """Return the options as the signature covers them (clip_client.signing.options_payload_id)."""
        return {"model": self.model, "embedding_type": self.embedding_type, "dimensions": self.dimensions}


class EmbedImageRequest(OutputOptions):
    # No max_length: a data URI carries the image itself; MAX_REQUEST_BYTES bounds it, and an http(s)
    # URL is refused past 2048 characters (app.fetch.download).
    image_url: ImageUrl = Field(
        min_length=1,
        description="An http(s) URL, or an inline `data:image/<jpeg|png|webp|gif>;base64,…` URI",
        examples=["https://example.com/cat.jpg"],
    )


class EmbedImageBatchRequest(OutputOptions):
    # The upper bound is MAX_BATCH_SIZE, checked by the route so that every list too long gets one message
    # naming it; MAX_REQUEST_BYTES bounds what is parsed.
    image_urls: list[ImageUrl] = Field(
        min_length=1,
        description="1 to MAX_BATCH_SIZE http(s) URLs or data URIs (`max_batch_size` in GET /health)",
    )


class EmbedTextRequest(OutputOptions):
    text: str = Field(min_length=1, examples=["a photo of a cat"])


class EmbedTextBatchRequest(OutputOptions):
    # As image_urls: MAX_BATCH_SIZE is checked by the route, blank and too long texts fail alone.
    texts: list[str] = Field(min_length=1, description="1 to MAX_BATCH_SIZE texts (`max_batch_size` in GET /health)")


class OpenAIEmbeddingsRequest(_Strict):
    """OpenAI's embeddings request, with Infinity's `modality` for images."""

    model: str = Field(description="A served model: its name or alias (GET /v1/models)")
    # Before `input`, whose check needs it (pydantic validates fields in the order declared).
    modality: Literal["text", "image"] = Field("text", description="What `input` holds (Infinity's name)")
    # A string or a list of strings; OpenAI's token arrays are not accepted (open_clip has its own tokenizer).
    input: str | list[str] = Field(description="1 to MAX_BATCH_SIZE texts, or image URLs / data URIs")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: each vector as base64 of its bytes (little-endian float32 by default)"
    )
    dimensions: int | None = Field(
        None, description="The model's dimension, or a smaller one it was trained for (matryoshka): truncated"
    )
    embedding_type: EmbeddingType = Field("float32", description=f"The vectors' type (an extra field): {_TYPES}")
    user: str | None = Field(None, description="Accepted and ignored, as OpenAI's own end-user id")

    @field_validator("input")
    @classmethod
    def _image_urls_printable(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        if info.data.get("modality") == "image":
            for index, url in enumerate([value] if isinstance(value, str) else value):
                problem = url_text_problem(url)
                if problem is not None:
                    raise PydanticCustomError(
                        INVALID_URL_ERROR, "input[{index}]: {problem}", {"index": index, "problem": problem}
                    )
        return value


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class EmbeddingResponse(BaseModel):
    embedding: list[float] | list[int]
    dim: int
    model: str
    embedding_type: EmbeddingType | None = None  # only when the request asked for one


class ErrorDetail(BaseModel):
    code: str
    message: str
    # On a 401 only: the id the refusal's log line carries (also the X-Request-ID header).
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class BatchItem(BaseModel):
    index: int
    embedding: list[float] | list[int] | None
    error: ErrorDetail | None


class BatchResponse(BaseModel):
    results: list[BatchItem]
    succeeded: int
    failed: int
    dim: int
    model: str
    embedding_type: EmbeddingType | None = None  # only when the request asked for one


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
    pod: dict[str, object] | None = None  # WORKERS > 1: expected, ready, restarts, and each worker
    devices: list[str] | None = None  # WORKERS > 1: the devices the workers run on
    shared_state: str | None = None  # STATE_URL: "ok" or "unreachable"
    models: dict[str, dict[str, object]] | None = None  # MODELS: each model's state, by name


class ModelCard(BaseModel):
    """One served model, as GET /v1/models lists it (OpenAI's fields first; docs/api.md#models)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    aliases: list[str]
    default: bool
    open_clip: str
    pretrained: str | None
    status: str
    loaded: bool
    lazy: bool
    idle_ttl_s: float | None
    load_seconds: float | None
    modalities: list[str]
    dim: int | None
    dtype: str | None
    device: str | None
    fingerprint: str | None
    memory_bytes: int
    image: dict[str, builtins.object] | None  # `object` is a field here
    text: dict[str, builtins.object] | None
    matryoshka_dims: list[int]
    embedding_types: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
