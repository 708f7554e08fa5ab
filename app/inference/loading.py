"""Load a configured model: the one loader of the service, the legacy job and the image builds."""

from __future__ import annotations

from dataclasses import replace

import torch

from app.inference.fingerprint import embedding_fingerprint
from app.inference.image_tower import ImageOptions
from app.inference.model import ClipEmbedder, Embedder, resolve_device
from app.inference.sources import model_identity
from app.settings import Settings


def image_options(settings: Settings) -> ImageOptions:
    """Return the Engine section's image settings."""
    return ImageOptions(
        preprocess=settings.image_preprocess,
        jpeg_decode=settings.jpeg_decode,
        blocking_wait=settings.cuda_blocking_wait,
        max_pixels=settings.max_image_pixels,
        fast_decode=settings.fast_decode,
    )


def load_clip(settings: Settings) -> Embedder:
    """Load the default served model (CLIP_MODEL; with `settings.for_model(spec)`, that one entry), run its
    warm-up forward, and fingerprint its embedding space."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    specs = settings.served_models()
    spec = next((s for s in specs if s.default), specs[0])
    device = resolve_device(settings.device)
    embedder = ClipEmbedder(
        spec.model,
        spec.weights,
        device,
        precision=settings.model_dtype,
        buckets=settings.compile_buckets(device),
        compile=settings.engine_compile,
        packed_linear=settings.cpu_packed_linear,
        images=image_options(settings),
        towers=spec.towers,
    )
    embedder.warm_up()
    info = embedder.info
    fingerprint = embedding_fingerprint(
        model=model_identity(spec.model),
        weights=info.weights_sha256,
        dtype=info.dtype,
        device=info.device,
        preprocess=info.preprocess,
        context_length=info.context_length,
        fast_decode=settings.fast_decode,
        image_path=info.image_path or settings.image_path_kind,
    )
    embedder.info = replace(
        info, fingerprint=fingerprint, name=spec.served_name, matryoshka_dims=spec.matryoshka_dims or ()
    )
    return embedder


def load_every(settings: Settings) -> list[str]:
    """Load each served model once, one at a time, and let it go: what the pod image bakes (weights and
    tokenizers into the Hugging Face cache). Return the fingerprints, in MODELS' order."""
    fingerprints = []
    for spec in settings.served_models():
        fingerprints.append(load_clip(settings.for_model(spec)).info.fingerprint)
    return fingerprints
