"""Service configuration, read once from the environment.

Each field's description is its documentation: `python -m scripts.config_docs` renders them into
docs/configuration.md, grouped by SECTIONS.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.inference.spec import ModelSpec, check_served

GOOD_SECRET_CHARS = 32
LOOPBACK_HOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"


class Settings(BaseSettings):
    """Every knob of the service; names are the environment variables, case-insensitive."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    # Authentication
    embedding_hmac_secret: SecretStr | None = Field(
        None,
        description=(
            "The shared secret that signs `/v1` requests (HMAC-SHA256, see docs/api.md). Required unless "
            "`API_KEYS` or `ALLOW_INSECURE_AUTH=1` is set (with only `API_KEYS`, only `/v1/embeddings` can be "
            "called). Several comma-separated secrets are all accepted, for key rotation "
            "(docs/security.md). Use at least "
            f"{GOOD_SECRET_CHARS} random characters (`openssl rand -hex 32`): a shorter key is accepted, with a "
            "warning at start-up. Never logged."
        ),
    )
    api_keys: SecretStr | None = Field(
        None,
        description=(
            "API keys accepted as `Authorization: Bearer <key>` on `/v1/embeddings` only (the endpoint of "
            "OpenAI's SDKs, which cannot sign a body); the other endpoints take signed requests only. "
            "Comma-separated, all accepted, for rotation as `EMBEDDING_HMAC_SECRET`; compared in constant "
            f"time; never logged. Use at least {GOOD_SECRET_CHARS} random characters. Each key has its own "
            "rate limit (`RATE_LIMIT_ITEMS_PER_S`)."
        ),
    )
    allow_insecure_auth: bool = Field(
        False,
        description=(
            "Local development only: `1` accepts requests without a valid signature. Start-up warns, "
            '`/health` says `"auth": "insecure"`, and `HOST` defaults to 127.0.0.1.'
        ),
    )
    auth_max_skew_s: int = Field(
        300,
        ge=1,
        le=86_400,
        description=(
            "Seconds: a request whose `X-Timestamp` is further than this from the server clock, either way, "
            "is refused (401). Raise it only for callers whose clocks drift; nonces are remembered for twice "
            "this long plus 6 s (the timestamp's whole acceptance window and a margin)."
        ),
    )
    require_nonce: bool = Field(
        False,
        description=(
            "`1` refuses signed requests without `X-Nonce`, so that a captured request cannot be replayed "
            "within the timestamp window. The client library sends a nonce with every request."
        ),
    )
    nonce_cache_size: int = Field(
        1_000_000,
        ge=1,
        description=(
            "Most nonces remembered at once, each for 2 × `AUTH_MAX_SKEW_S` + 6 s. When it is full of live ones, "
            "a request with a new nonce gets 503 `overloaded` rather than an old nonce being forgotten. Keep it "
            "above the peak of signed requests per second × (2 × `AUTH_MAX_SKEW_S` + 6); the memory an entry takes "
            "is in docs/security.md."
        ),
    )

    # Requests and downloads
    max_batch_size: int = Field(
        16,
        ge=1,
        le=1024,
        description=(
            "Most items in one request: image URLs of `/v1/embed/image-batch`, texts of `/v1/embed/text-batch`, "
            "image parts of `/v1/embed/image-upload`, inputs of `/v1/embeddings`; more is refused with 422 "
            "`invalid_request`. The client library reads it from `/health` and splits longer lists."
        ),
    )
    max_image_size_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description=(
            "Bytes: most of one image, downloaded (counted while streaming, after gzip/deflate decompression, "
            "whatever `Content-Length` says), inline (a data URI's decoded bytes) or uploaded (one part); more "
            "is 413 `image_too_large`."
        ),
    )
    image_download_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description=(
            "Seconds: the deadline of one image download, redirects included; past it the item fails with "
            "504 `download_timeout`. Raise it for slow image hosts."
        ),
    )
    download_concurrency: int = Field(
        8,
        ge=1,
        le=1024,
        description=(
            "Image downloads in flight at once, across all requests of the process. Raise it (e.g. to 32) "
            "when most images come from slow remote hosts."
        ),
    )
    allow_private_urls: bool = Field(
        False,
        description=(
            "Development and tests only: `1` lifts the address and port rules of the URL guard (private and "
            "loopback hosts, any port), so that images can be served from 127.0.0.1; the scheme, credential, "
            "length, host-list and size rules stay. `HOST` then defaults to 127.0.0.1."
        ),
    )
    allowed_ports: Annotated[frozenset[int], NoDecode] = Field(
        frozenset({80, 443}),
        description="Comma-separated ports that image URLs may use; any other is 422 `invalid_url`.",
    )
    allowed_image_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "Comma-separated image hosts; when set, only these are fetched: exact (`cdn.example.com`) or a "
            "domain's subdomains (`*.example.com`), any other is 422 `url_not_allowed`. Empty: any public host."
        ),
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description=(
            "Most pixels (width × height, read from the image header before decoding) of one image; more is "
            "413 `image_too_large`. Pillow's own decompression-bomb limit applies on top."
        ),
    )
    max_text_chars: int = Field(
        10_000,
        ge=1,
        description=(
            "Characters: longest text `/v1/embed/text` accepts (and each text of a batch or of "
            "`/v1/embeddings`); longer is 422 `invalid_request`. Text beyond "
            "the model's context (77 tokens) is truncated by the tokenizer, so this bounds work, not meaning."
        ),
    )
    max_request_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description=(
            "Bytes: largest request body, declared by `Content-Length` or streamed chunked; larger is refused "
            "with 413 `request_too_large` (a declared size before any byte is read). The default fits a full "
            "batch of ordinary photos sent inline (base64 adds a third) or uploaded. What all bodies held at "
            "once may take is `MAX_BUFFERED_REQUEST_BYTES` (docs/security.md#requests)."
        ),
    )
    max_buffered_request_bytes: int | None = Field(
        None,
        ge=1024,
        description=(
            "Bytes of request bodies one process holds at once, all requests together, from the first byte "
            "read until the answer. A body whose `Content-Length` does not fit in what is left gets 503 "
            "`overloaded` (with `Retry-After`) before it is read, one that outgrows it while arriving too. "
            "Unset: 4 × `MAX_REQUEST_BYTES` (128 MiB by default). At least `MAX_REQUEST_BYTES`. Parsing "
            "multiplies it: the memory it bounds is in docs/security.md#requests."
        ),
    )
    request_body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "Seconds: a request's whole body must arrive within this long of its headers; a slower one gets "
            "408 `request_timeout` and the connection is closed. 30 s carries a full `MAX_REQUEST_BYTES` "
            "body at about 1 MB/s; raise it for callers on slower links."
        ),
    )
    embeddings_model_alias: str | None = Field(
        None,
        description=(
            "Another name `/v1/embeddings` accepts in its `model` field, besides the served open_clip name "
            "(`CLIP_MODEL`), e.g. `clip` so that callers need not change when the model does. Answers name "
            "the model as the caller did. With `MODELS`, give each entry its `alias` instead."
        ),
    )

    # Model
    clip_model: str = Field(
        "ViT-B-32",
        description=(
            "An open_clip model name (e.g. `ViT-B-32`, `ViT-L-14`), or `clip-tiny`, the tiny test model "
            "configured in app/inference/model_configs/. Vectors of different models are not comparable."
        ),
    )
    clip_pretrained: str = Field(
        "laion2b_s34b_b79k",
        description=(
            "An open_clip pretrained tag of `CLIP_MODEL`, a path to a local checkpoint file, or `none` "
            '(random weights, development only: start-up warns and `/health` says `"random_weights": true`). '
            "A tag needs network access at start-up, or a warm Hugging Face cache; without either the server "
            "exits naming the alternatives."
        ),
    )
    models: Annotated[tuple[ModelSpec, ...] | None, NoDecode] = Field(
        None,
        description=(
            "Several models in one process, as a JSON list, one object per model: `model` (an open_clip name, or "
            "`local-dir:/path`, a folder with open_clip_config.json, weights and tokenizer files), `pretrained` "
            "(with a name: a tag, a checkpoint file, or `none`), and optionally `name` (what requests send as "
            "`model`; default: the open_clip name or the folder's name), `alias`, `towers` (`image`, `text` or "
            "`both`, the default), `default` (serves requests that name no model; default: the first entry), "
            "`lazy` (load on first use), `idle_ttl_s` (unload after that long unused) and `matryoshka_dims` (the "
            "dimensions `dimensions` may truncate to). Each model has its own engine. Unset: one model, "
            "`CLIP_MODEL` with `CLIP_PRETRAINED`; set, those two are ignored. Example and memory: README.pod.md."
        ),
    )
    device: str = Field(
        "auto",
        description=(
            "`auto` (CUDA when available, else the CPU with a warning), `cpu`, `cuda` or `cuda:N`. Production "
            "sets `cuda`, so that a machine without a usable GPU fails to start instead of running slowly."
        ),
    )

    # Engine
    engine_max_batch: int | None = Field(
        None,
        ge=1,
        le=4096,
        description=(
            "Most items (images, or texts) in one forward pass. Unset: 256 on CUDA (ViT-B-32 on an H200: 10,835 "
            "images/s at 256 against 9,471 at 64, fp16), 32 on the CPU. Lower it when batches run out of GPU "
            "memory (`clip_oom_events_total` rises)."
        ),
    )
    engine_max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description=(
            "Milliseconds a partial batch waits for more items when the queue runs dry; `0` never waits. "
            "How the engine batches, and when it waits longer or not at all: docs/batching.md."
        ),
    )
    cpu_workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description=(
            "Threads that decode and preprocess images and tokenise long texts (short ones are tokenised on "
            "the event loop). Unset: one per core, at least 2."
        ),
    )
    fast_decode: bool = Field(
        True,
        description=(
            "`1` decodes large JPEGs at a reduced size (DCT scaling) before resizing, which is much cheaper "
            "for photos; only images over twice the model's input size are affected, and their vectors move "
            "slightly. `0`: full decode, exact parity with open_clip's preprocessing."
        ),
    )
    model_dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Precision of the model's weights and activations; `auto` is fp16 on CUDA and fp32 on the CPU.",
    )
    engine_compile: bool = Field(
        False,
        description=(
            "`1` compiles the image tower (torch.compile) for fixed batch sizes, powers of two up to "
            "`ENGINE_MAX_BATCH`; start-up takes much longer (one compile per size). Off until it is measured "
            "on a GPU (bench/README.md)."
        ),
    )
    image_preprocess: Literal["pil", "pil-uint8", "tensor"] = Field(
        "pil",
        description=(
            "Where an image becomes the model's input. `pil`: open_clip's own transform on the decode threads, "
            "float32 pixels to the engine (vectors identical to open_clip's). `pil-uint8`: the same resize and "
            "crop on the decode threads, uint8 pixels to the engine, normalised there on the model's device "
            "(bit-identical to `pil`, a quarter of the bytes to copy). `tensor`: the decode threads only decode; "
            "the engine resizes, crops and normalises each batch with tensor ops on the model's device (on a GPU, "
            "no host core resizes; vectors within a cosine of 0.9995 of open_clip's). Why: docs/performance.md."
        ),
    )
    jpeg_decode: Literal["pool", "engine"] = Field(
        "pool",
        description=(
            "`engine` hands baseline JPEGs to the engine undecoded, after the header checks (format, pixel "
            "budget), and the engine decodes each batch on the model's device with torchcodec: nvJPEG on the "
            "GPU's JPEG engines on CUDA. Progressive, CMYK and other JPEGs, every other format, and a JPEG the "
            "batch decoder refuses are decoded by the decode threads, as with `pool`. Needs "
            "`IMAGE_PREPROCESS=tensor`. Off until a GPU run has checked it (bench/README.md)."
        ),
    )
    cuda_blocking_wait: bool = Field(
        False,
        description=(
            "On CUDA: `1` waits for a batch's vectors on a blocking CUDA event, so that the waiting thread "
            "sleeps instead of spinning on a host core for the whole forward pass. No effect on the CPU."
        ),
    )
    engine_overlap: bool = Field(
        False,
        description=(
            "`1` starts the next image batch (decode, preprocess, forward) while the device still runs the "
            "current one, whose vectors a second thread waits for; at most two batches are in flight. Meant "
            "for CUDA; on the CPU it only moves the wait to that thread."
        ),
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description=(
            "torch's threads for its CPU work in each server process. Unset: torch's default, one per core. "
            "On CUDA the model runs on the GPU and torch's CPU threads only stack and copy batches; `1` keeps "
            "a team of OpenMP threads per worker from waking, and spinning, on the host's cores."
        ),
    )
    cpu_packed_linear: bool = Field(
        True,
        description=(
            "On the CPU in fp32: `1` runs the transformer blocks' linear layers on oneDNN with weights packed "
            'once at load (`/health` says `"kernels": "onednn-packed"`); at load the packed model is checked '
            "against open_clip's own blocks on fixed inputs and not used if any value moves by more than 1e-4. "
            '`0`: open_clip\'s own blocks (`"kernels": "torch"`). No effect on CUDA. Why: docs/performance.md.'
        ),
    )

    # Server
    host: str | None = Field(
        None,
        description=(
            f"Address the server listens on. Unset: {ALL_INTERFACES} (every interface), or {LOOPBACK_HOST} when "
            "`ALLOW_INSECURE_AUTH` or `ALLOW_PRIVATE_URLS` is set, so that a development server is not an "
            "open fetcher for the whole network. Set to a non-loopback address together with either flag, "
            "the server starts with a loud warning."
        ),
    )
    port: int = Field(8000, ge=1, le=65535, description="TCP port the server listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description=(
            "Least severe log lines written. Requests to `/health`, `/live` and `/metrics` are logged at `debug` only."
        ),
    )

    # Operations
    max_queued_items: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description=(
            "Most images and texts admitted and not yet answered; a request that does not fit is refused "
            "whole, before anything is downloaded, with 503 `overloaded` (the client retries it). At least "
            "`MAX_BATCH_SIZE`. Lower it to shed load earlier."
        ),
    )
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Seconds: a request's deadline; its items still waiting for the model after it are dropped with "
            "503 `overloaded`. Keep it below the proxy's limit (RunPod: 100 s)."
        ),
    )
    shutdown_grace_s: float = Field(
        25.0,
        ge=0,
        le=3600,
        description=(
            "Seconds: on SIGTERM, how long requests in flight may take to finish before the process stops. "
            "Keep it below the container's stop timeout (`docker stop -t`)."
        ),
    )
    cache_max_entries: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description=(
            "Embeddings kept in an LRU cache keyed by the SHA-256 of the image bytes or of the text (and, with "
            "`MODELS`, the model's embedding space), one vector each, all models together; `0` turns it off."
        ),
    )
    log_format: Literal["json", "text"] = Field(
        "json",
        description=(
            "Log lines on stderr: `json`, one JSON object per line (one per request), or `text`, for reading by eye."
        ),
    )

    # Scaling and shared state
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description=(
            "Server processes on the one port, each with its own event loop, decode pool, engine and model "
            "replica (on CUDA, worker i uses GPU i mod the visible GPUs). Above 1 it needs `STATE_URL`, so that "
            "a nonce seen by one worker is refused by all. Sizing: README.pod.md, Scaling a pod."
        ),
    )
    engine_process: Literal["auto", "on", "off"] = Field(
        "off",
        description=(
            "`on`: the pod (`python -m app`) runs one engine process per visible GPU (one on the CPU) that holds "
            "the model and batches the items of every HTTP worker, which then only handle the network, "
            "signatures, downloads, the cache and decoding, and hand the engine payload bytes through shared "
            "memory. `off`: each worker loads its own model replica and batches alone (worker i on GPU i mod "
            "the GPUs). `auto`: `on` when `WORKERS` > 1 and one model is served. With `on` and `WORKERS=1` one "
            "worker feeds one engine. One model only: `on` with several `MODELS` entries is refused. Off by default until a GPU run has measured it (on a CPU the runs disagree). Why and the "
            "figures: docs/performance.md (one engine per GPU)."
        ),
    )
    engine_arena_mb: int = Field(
        128,
        ge=8,
        le=65_536,
        description=(
            "MiB of shared memory each HTTP worker holds for the payloads it hands the engine processes "
            "(`ENGINE_PROCESS`): JPEG bytes, pixels or token ids, from submission until the engine answers. "
            "Only the pages used are committed. When it is full an item waits for room within its "
            "request's deadline, then gets 503 `overloaded`; an image larger than all of it gets 413 "
            "`image_too_large`. It is a memfd, not a file of /dev/shm: Docker's 64 MB `--shm-size` does not bound it."
        ),
    )
    state_url: SecretStr | None = Field(
        None,
        description=(
            "Redis URL shared by every worker and pod (`redis://host:6379/0`, `rediss://` for TLS): nonces, the "
            "embedding cache's second level and the rate limits live there. Unset: all three stay in the "
            "process (one worker only). Never logged (it may hold a password). Failure rules: docs/shared-state.md."
        ),
    )
    state_timeout_s: float = Field(
        0.5,
        gt=0,
        le=30,
        description=(
            "Seconds: the longest wait for one call to the shared store. Past it a nonce check or a rate limit "
            "answers 503 `unavailable` (fail closed) and a cache lookup counts as a miss (fail open)."
        ),
    )
    cache_ttl_s: int = Field(
        86_400,
        ge=1,
        le=31_536_000,
        description="Seconds a vector stays in the shared cache (`STATE_URL`) after it was computed.",
    )
    rate_limit_items_per_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Images and texts per second each signing key may send, shared by every worker and pod (needs "
            "`STATE_URL`); over it, 429 `rate_limited` with `Retry-After`. Unset: no limit."
        ),
    )
    rate_limit_burst: int | None = Field(
        None,
        ge=1,
        description=(
            "Items a signing key may send at once on top of its steady rate (the bucket's size). Unset: one "
            "second of `RATE_LIMIT_ITEMS_PER_S`. At least `MAX_BATCH_SIZE`, or a full batch is never admitted."
        ),
    )

    @field_validator("embedding_hmac_secret", mode="before")
    @classmethod
    def _blank_secret_is_none(cls, value: object) -> object:
        # Several comma-separated secrets rotate keys; only blanks (or only commas) mean "not set".
        return None if isinstance(value, str) and not value.replace(",", "").strip() else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _blank_keys_are_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.replace(",", "").strip() else value

    @field_validator("embeddings_model_alias", mode="before")
    @classmethod
    def _blank_alias_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("models", mode="before")
    @classmethod
    def _models_from_json(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(
                f"MODELS is not JSON ({exc}); write a list of objects, e.g. "
                '[{"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}]'
            ) from None

    @field_validator("models")
    @classmethod
    def _models_are_served(cls, value: tuple[ModelSpec, ...] | None) -> tuple[ModelSpec, ...] | None:
        return None if value is None else check_served(value)

    @field_validator("host", mode="before")
    @classmethod
    def _blank_host_is_none(cls, value: object) -> object:
        # `HOST= make run` means "the default", which depends on the development flags.
        return None if isinstance(value, str) and not value.strip() else value

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

    @field_validator("state_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            # The value is not quoted: it may hold a password.
            raise ValueError("STATE_URL must start with redis://, rediss:// or unix:// (e.g. redis://127.0.0.1:6379/0)")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in {"auto", "cpu", "cuda"} and not value.startswith("cuda:"):
            raise ValueError(f"DEVICE must be auto, cpu, cuda or cuda:N, not {value!r}")
        return value

    @model_validator(mode="after")
    def _auth_is_configured(self) -> Settings:
        if self.embedding_hmac_secret is None and self.api_keys is None and not self.allow_insecure_auth:
            raise ValueError(
                "EMBEDDING_HMAC_SECRET is not set: set it to a long random string "
                "(e.g. `openssl rand -hex 32`), and/or API_KEYS for /v1/embeddings, or set ALLOW_INSECURE_AUTH=1 "
                "for local development only"
            )
        return self

    @model_validator(mode="after")
    def _shared_state_where_needed(self) -> Settings:
        if self.workers > 1 and self.state_url is None:
            raise ValueError(
                f"WORKERS={self.workers} needs STATE_URL (e.g. redis://127.0.0.1:6379/0): each worker would "
                "otherwise remember only its own nonces, and a replayed request could get through another worker"
            )
        if self.rate_limit_items_per_s is not None and self.state_url is None:
            raise ValueError(
                "RATE_LIMIT_ITEMS_PER_S needs STATE_URL (e.g. redis://127.0.0.1:6379/0), where the limits are counted"
            )
        if self.rate_limit_burst is not None and self.rate_limit_burst < self.max_batch_size:
            raise ValueError(
                f"RATE_LIMIT_BURST={self.rate_limit_burst} is below MAX_BATCH_SIZE={self.max_batch_size}: a full "
                "batch request could never be admitted; raise RATE_LIMIT_BURST or lower MAX_BATCH_SIZE"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> Settings:
        if self.models is None:
            return self
        if self.embeddings_model_alias is not None:
            raise ValueError(
                "MODELS and EMBEDDINGS_MODEL_ALIAS are both set: with MODELS, give the model its alias in its "
                'entry ("alias": "clip") and unset EMBEDDINGS_MODEL_ALIAS'
            )
        return self

    @model_validator(mode="after")
    def _engine_process_serves_one_model(self) -> Settings:
        if self.engine_process == "on" and self.models is not None and len(self.models) > 1:
            names = ", ".join(spec.served_name for spec in self.models)
            raise ValueError(
                f"ENGINE_PROCESS=on runs one model in its engine processes, and MODELS lists {len(self.models)} "
                f"({names}): set ENGINE_PROCESS=off (each worker loads every model), or run one pod per model"
            )
        return self

    @model_validator(mode="after")
    def _jpeg_decode_has_a_tensor_path(self) -> Settings:
        if self.jpeg_decode == "engine" and self.image_preprocess != "tensor":
            raise ValueError(
                f"JPEG_DECODE=engine needs IMAGE_PREPROCESS=tensor (not {self.image_preprocess}): the JPEGs it "
                "decodes on the model's device are resized there; set IMAGE_PREPROCESS=tensor or JPEG_DECODE=pool"
            )
        return self

    @model_validator(mode="after")
    def _buffer_fits_a_body(self) -> Settings:
        if self.max_buffered_request_bytes is not None and self.max_buffered_request_bytes < self.max_request_bytes:
            raise ValueError(
                f"MAX_BUFFERED_REQUEST_BYTES={self.max_buffered_request_bytes} is below MAX_REQUEST_BYTES="
                f"{self.max_request_bytes}: a body of the largest size could never be read; raise "
                "MAX_BUFFERED_REQUEST_BYTES, unset it (4 × MAX_REQUEST_BYTES), or lower MAX_REQUEST_BYTES"
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
    def api_key_list(self) -> tuple[str, ...]:
        """Return the accepted API keys: API_KEYS split at commas, blanks dropped."""
        if self.api_keys is None:
            return ()
        return tuple(k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip())

    @property
    def dev_flags(self) -> tuple[str, ...]:
        """Return the development flags that are set: ALLOW_INSECURE_AUTH, ALLOW_PRIVATE_URLS."""
        flags = {"ALLOW_INSECURE_AUTH": self.allow_insecure_auth, "ALLOW_PRIVATE_URLS": self.allow_private_urls}
        return tuple(name for name, on in flags.items() if on)

    @property
    def resolved_host(self) -> str:
        """Return the address to listen on: HOST, else loopback with a development flag, else every interface."""
        if self.host is not None:
            return self.host
        return LOOPBACK_HOST if self.dev_flags else ALL_INTERFACES

    def served_models(self) -> tuple[ModelSpec, ...]:
        """Return the models to serve, the default one marked: MODELS, else CLIP_MODEL as the only one."""
        if self.models is not None:
            return self.models
        local = self.clip_model.startswith("local-dir:")
        # Not validated: these settings meant what they mean before MODELS existed (any alias, any name).
        spec = ModelSpec.model_construct(
            model=self.clip_model,
            pretrained=None if local else self.clip_pretrained,
            name=None,
            alias=self.embeddings_model_alias,
            towers="both",
            default=True,
            lazy=False,
            idle_ttl_s=None,
            matryoshka_dims=None,
        )
        return (spec,)

    def for_model(self, spec: ModelSpec) -> Settings:
        """Return these settings with `spec` as the only model: what one model's loader reads."""
        return self.model_copy(update={"models": (spec,)})

    @property
    def random_weights(self) -> bool:
        """Say whether the model runs with random weights (CLIP_PRETRAINED=none)."""
        return self.clip_pretrained.strip().lower() in {"none", ""}

    def startup_warnings(self) -> list[str]:
        """Return what an operator must hear at start-up: development flags in the open, weak secrets."""
        warnings = []
        flags = self.dev_flags
        if flags and self.host is not None and not _is_loopback(self.host):
            risk = {
                ("ALLOW_INSECURE_AUTH",): "can use the service without signing a request",
                ("ALLOW_PRIVATE_URLS",): "with a valid signature can make the server fetch private and "
                "loopback addresses (a fetcher into the local network)",
                ("ALLOW_INSECURE_AUTH", "ALLOW_PRIVATE_URLS"): "gets an unauthenticated fetcher into the local network",
            }[flags]
            settings = " and ".join(f"{flag}=1" for flag in flags)
            warnings.append(
                f"DEVELOPMENT MODE ON AN OPEN ADDRESS: HOST={self.host} with {settings}: anyone who can reach "
                f"this address {risk}. Unset HOST to listen on {LOOPBACK_HOST} only, or unset the flags"
            )
        if self.models is not None:
            # The pod image sets both from its build arguments: MODELS, when set, is what the pod serves.
            for name in ("clip_model", "clip_pretrained"):
                if name in self.model_fields_set and getattr(self, name) != type(self).model_fields[name].default:
                    warnings.append(f"{name.upper()}={getattr(self, name)} is ignored: MODELS lists the models served")
        for name, keys, risk in (
            ("EMBEDDING_HMAC_SECRET", self.hmac_keys, "guessed offline from one signed request"),
            ("API_KEYS", self.api_key_list, "guessed"),
        ):
            for position, key in enumerate(keys, start=1):
                if len(key) < GOOD_SECRET_CHARS:
                    length = f"{len(key)} character{'s' if len(key) != 1 else ''}"
                    warnings.append(
                        f"{name} key {position} of {len(keys)} is {length}: a short secret can be {risk}; use "
                        f"at least {GOOD_SECRET_CHARS} random characters, e.g. `openssl rand -hex 32`"
                    )
        return warnings

    def resolved_buffered_request_bytes(self) -> int:
        """Bytes of request bodies a process holds at once: MAX_BUFFERED_REQUEST_BYTES, else 4 × MAX_REQUEST_BYTES."""
        return self.max_buffered_request_bytes or 4 * self.max_request_bytes

    @property
    def image_path_kind(self) -> str:
        """Name how images become model inputs, as far as it moves vectors (`pil-uint8` gives `pil`'s very pixels)."""
        preprocess = "pil" if self.image_preprocess == "pil-uint8" else self.image_preprocess
        return f"{preprocess}/{self.jpeg_decode}"

    def resolved_engine_max_batch(self, device: str) -> int:
        """Items per forward pass: ENGINE_MAX_BATCH, else 256 on CUDA and 32 on CPU."""
        return self.engine_max_batch or (256 if device.startswith("cuda") else 32)

    def compile_buckets(self, device: str) -> tuple[int, ...]:
        """Batch sizes to compile for (ENGINE_COMPILE=1): powers of two up to the engine's max batch."""
        if not self.engine_compile:
            return ()
        top = self.resolved_engine_max_batch(device)
        return tuple(sorted({b for b in (1, 8, 16, 32, 64, 128, 256, 512) if b < top} | {top}))

    def engine_process_on(self) -> bool:
        """Say whether the pod runs engine processes (ENGINE_PROCESS; `auto`: when WORKERS > 1 and one model)."""
        one_model = self.models is None or len(self.models) == 1
        return self.engine_process == "on" or (self.engine_process == "auto" and self.workers > 1 and one_model)

    def resolved_cpu_workers(self) -> int:
        """Threads for download, decode and preprocess: one per core, at least two."""
        return self.cpu_workers or max(2, os.cpu_count() or 2)


def _is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


# The sections of docs/configuration.md, each named by its first field; fields follow in class order.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("Authentication", "embedding_hmac_secret"),
    ("Requests and downloads", "max_batch_size"),
    ("Model", "clip_model"),
    ("Engine", "engine_max_batch"),
    ("Server", "host"),
    ("Operations", "max_queued_items"),
    ("Scaling and shared state", "workers"),
)


@dataclass(frozen=True, slots=True)
class EnvVariable:
    """An environment variable read outside Settings, documented beside it in docs/configuration.md."""

    name: str
    default: str
    section: str
    description: str


# `python -m app` sets it before torch loads (app/__main__.py); libgomp reads it, not Settings.
OPENMP_SPIN_COUNT = EnvVariable(
    "GOMP_SPINCOUNT",
    "10000",
    "Engine",
    "How many times torch's idle OpenMP threads spin before they sleep. `python -m app` sets it before torch "
    "loads unless the environment already has it; libgomp's own default (300000) keeps idle threads on the "
    "cores after every forward pass, just when the event loop and the decode threads need them. Why: "
    "docs/performance.md.",
)
EXTRA_VARIABLES: tuple[EnvVariable, ...] = (OPENMP_SPIN_COUNT,)
