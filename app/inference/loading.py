"""Load the configured model: the one loader of the service, the legacy job and the image builds."""

from __future__ import annotations

from dataclasses import replace

from app.inference.fingerprint import embedding_fingerprint
from app.inference.model import ClipEmbedder, Embedder, resolve_device
from app.settings import Settings


def load_clip(settings: Settings) -> Embedder:
    """Load the configured open_clip model, run its warm-up forward, and fingerprint its embedding space."""
    device = resolve_device(settings.device)
    embedder = ClipEmbedder(
        settings.clip_model,
        settings.clip_pretrained,
        device,
        precision=settings.model_dtype,
        buckets=settings.compile_buckets(device),
        compile=settings.engine_compile,
        packed_linear=settings.cpu_packed_linear,
    )
    embedder.warm_up()
    info = embedder.info
    fingerprint = embedding_fingerprint(
        model=info.model,
        weights=info.weights_sha256,
        dtype=info.dtype,
        device=info.device,
        preprocess=info.preprocess,
        context_length=info.context_length,
        fast_decode=settings.fast_decode,
    )
    embedder.info = replace(info, fingerprint=fingerprint)
    return embedder
