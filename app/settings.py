"""Service configuration, read once from the environment."""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; names are the environment variables, case-insensitive."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    # Authentication
    embedding_hmac_secret: SecretStr | None = None
    allow_insecure_auth: bool = False
    auth_max_skew_s: int = Field(300, ge=1, le=86_400)
    require_nonce: bool = False
    # Each signed request with a nonce holds an entry for 2 × AUTH_MAX_SKEW_S (~115 bytes): 1M entries
    # carry 1,666 such requests/s at the default skew, in ~115 MB when full.
    nonce_cache_size: int = Field(1_000_000, ge=1)

    # Requests and downloads
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_image_size_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    image_download_timeout_s: float = Field(30.0, gt=0, le=600)
    download_concurrency: int = Field(8, ge=1, le=1024)
    allow_private_urls: bool = False
    allowed_ports: Annotated[frozenset[int], NoDecode] = frozenset({80, 443})
    allowed_image_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_text_chars: int = Field(10_000, ge=1)
    max_request_bytes: int = Field(1024 * 1024, ge=1024)

    # Model
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "laion2b_s34b_b79k"
    device: str = "auto"

    # Engine
    engine_max_batch: int | None = Field(None, ge=1, le=4096)
    engine_max_wait_ms: float = Field(2.0, ge=0, le=1000)
    cpu_workers: int | None = Field(None, ge=1, le=256)
    fast_decode: bool = True
    model_dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    engine_compile: bool = False
    cpu_packed_linear: bool = True

    # Server
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Operations
    max_queued_items: int = Field(1024, ge=1, le=1_000_000)
    request_timeout_s: float = Field(60.0, gt=0, le=3600)
    shutdown_grace_s: float = Field(25.0, ge=0, le=3600)
    cache_max_entries: int = Field(10_000, ge=0, le=10_000_000)
    log_format: Literal["json", "text"] = "json"

    @field_validator("embedding_hmac_secret", mode="before")
    @classmethod
    def _blank_secret_is_none(cls, value: object) -> object:
        # Several comma-separated secrets rotate keys; only blanks (or only commas) mean "not set".
        return None if isinstance(value, str) and not value.replace(",", "").strip() else value

    @field_validator("allowed_ports", mode="before")
    @classmethod
    def _split_ports(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return frozenset(int(p) for p in value.split(",") if p.strip())
        except ValueError:
            raise ValueError(f"ALLOWED_PORTS must be comma-separated port numbers, e.g. 80,443,8080, not {value!r}")

    @field_validator("allowed_ports")
    @classmethod
    def _ports_in_range(cls, value: frozenset[int]) -> frozenset[int]:
        if not value or not all(1 <= p <= 65535 for p in value):
            raise ValueError(f"ALLOWED_PORTS must list ports between 1 and 65535, e.g. 80,443, not {sorted(value)}")
        return value

    @field_validator("allowed_image_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            return value
        hosts = tuple(str(h).strip().lower().rstrip(".") for h in items if str(h).strip())
        for host in hosts:
            if not re.fullmatch(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*|[0-9a-f:.]+", host):
                raise ValueError(
                    "ALLOWED_IMAGE_HOSTS entries are host names (example.com) or *.suffix (*.example.com), "
                    f"not {host!r}"
                )
        return hosts

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in {"auto", "cpu", "cuda"} and not value.startswith("cuda:"):
            raise ValueError(f"DEVICE must be auto, cpu, cuda or cuda:N, not {value!r}")
        return value

    @model_validator(mode="after")
    def _auth_is_configured(self) -> Settings:
        if self.embedding_hmac_secret is None and not self.allow_insecure_auth:
            raise ValueError(
                "EMBEDDING_HMAC_SECRET is not set: set it to a long random string "
                "(e.g. `openssl rand -hex 32`), or set ALLOW_INSECURE_AUTH=1 for local development only"
            )
        return self

    @model_validator(mode="after")
    def _queue_fits_a_batch(self) -> Settings:
        if self.max_queued_items < self.max_batch_size:
            raise ValueError(
                f"MAX_QUEUED_ITEMS={self.max_queued_items} is below MAX_BATCH_SIZE={self.max_batch_size}: "
                "a full batch request could never be admitted; raise MAX_QUEUED_ITEMS or lower MAX_BATCH_SIZE"
            )
        return self

    @property
    def hmac_keys(self) -> tuple[str, ...]:
        """Return the accepted signing secrets: EMBEDDING_HMAC_SECRET split at commas, blanks dropped."""
        if self.embedding_hmac_secret is None:
            return ()
        return tuple(k.strip() for k in self.embedding_hmac_secret.get_secret_value().split(",") if k.strip())

    @property
    def random_weights(self) -> bool:
        """Say whether the model runs with random weights (CLIP_PRETRAINED=none)."""
        return self.clip_pretrained.strip().lower() in {"none", ""}

    def resolved_engine_max_batch(self, device: str) -> int:
        """Items per forward pass: ENGINE_MAX_BATCH, else 64 on CUDA and 32 on CPU."""
        return self.engine_max_batch or (64 if device.startswith("cuda") else 32)

    def compile_buckets(self, device: str) -> tuple[int, ...]:
        """Batch sizes to compile for (ENGINE_COMPILE=1): powers of two up to the engine's max batch."""
        if not self.engine_compile:
            return ()
        top = self.resolved_engine_max_batch(device)
        return tuple(sorted({b for b in (1, 8, 16, 32, 64, 128, 256, 512) if b < top} | {top}))

    def resolved_cpu_workers(self) -> int:
        """Threads for download, decode and preprocess: one per core, at least two."""
        return self.cpu_workers or max(2, os.cpu_count() or 2)
