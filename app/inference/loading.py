"""Load the configured model: the one loader of the service, the legacy job and the image builds."""

from __future__ import annotations

from app.inference.model import ClipEmbedder, Embedder, resolve_device
from app.settings import Settings


def load_clip(settings: Settings) -> Embedder:
    """Load the configured open_clip model and run its warm-up forward."""
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
    return embedder
