"""Where a model comes from: the device it runs on, its open_clip config, its weights, and what names its space."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from app.inference.spec import LOCAL_DIR

log = logging.getLogger("app.inference.model")
ImageTransform = Callable[[Image.Image], torch.Tensor]
Tokenizer = Any  # open_clip's SimpleTokenizer or HFTokenizer: called on a list of texts, has context_length
OpenClipModel = Any  # open_clip's CLIP or CustomTextCLIP, an nn.Module whose towers are not typed

CONFIG_DIR = Path(__file__).parent / "model_configs"
# What open_clip looks for in a local-dir: folder; everything else there (config, tokenizer) names the space.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class ModelLoadError(Exception):
    """The model cannot be loaded; the message says what to change."""


def resolve_device(requested: str) -> str:
    """Map DEVICE=auto to cuda when available, else cpu (with a warning)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        log.warning("DEVICE=auto found no CUDA device: running on the CPU, which is much slower")
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"DEVICE={requested} but no CUDA device is available; use DEVICE=cpu or auto")
    return requested


def register_bundled_configs() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def check_model_name(model_name: str) -> None:
    """Raise ModelLoadError unless open_clip can build `model_name`: a known config, or a local-dir: folder."""
    import open_clip

    if model_name.startswith(LOCAL_DIR):
        folder = Path(model_name.removeprefix(LOCAL_DIR))
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(
                f"{model_name}: no open_clip_config.json in {folder}; a local-dir: folder holds open_clip's config, "
                "the weights and the tokenizer files (open_clip's push_to_hf_hub writes one)"
            )
        return
    if model_name not in open_clip.list_models():
        raise ModelLoadError(
            f"CLIP_MODEL={model_name!r} is not an open_clip model or bundled config "
            "(e.g. ViT-B-32, ViT-L-14, or clip-tiny for tests)"
        )


def resolve_pretrained(model_name: str, pretrained: str) -> str | None:
    """Return what to hand open_clip as `pretrained`, or explain why it cannot work."""
    import open_clip

    if model_name.startswith(LOCAL_DIR):
        return None  # the folder's own weights: open_clip ignores `pretrained` there
    value = pretrained.strip()
    if value.lower() in {"", "none"}:
        log.warning("CLIP_PRETRAINED=none: random weights, embeddings are meaningless (dev only)")
        return None
    if os.path.sep in value or value.endswith(WEIGHT_SUFFIXES):
        if not os.path.isfile(value):
            raise ModelLoadError(
                f"CLIP_PRETRAINED={value!r} looks like a path but no such file exists; give an existing "
                "local checkpoint file, a pretrained tag, or 'none' for random weights"
            )
        return value
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if value not in tags:
        raise ModelLoadError(
            f"CLIP_PRETRAINED={value!r} is not a pretrained tag of {model_name} "
            f"(known: {', '.join(tags) or 'none'}); give a path to a local checkpoint file, "
            "or 'none' for random weights"
        )
    return value


def weights_named(model_name: str, pretrained: str, weights: str | None) -> str:
    """Return what /health calls the weights: the tag or file, a folder's weights file, or `none`."""
    if model_name.startswith(LOCAL_DIR):
        folder = Path(model_name.removeprefix(LOCAL_DIR))
        files = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        return files[0] if files else "none"
    return pretrained if weights is not None else "none"


def model_identity(model_name: str) -> str:
    """Return what names the model's architecture and tokenizer in the fingerprint (app.inference.fingerprint).

    An open_clip name names both; a local-dir: folder is named by the bytes of its files other than the
    weights (config, tokenizer), not by its path, so that two copies of one folder give one fingerprint.
    """
    if not model_name.startswith(LOCAL_DIR):
        return model_name
    folder = Path(model_name.removeprefix(LOCAL_DIR))
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in WEIGHT_SUFFIXES):
        digest.update(f"{path.relative_to(folder).as_posix()}|{path.stat().st_size}|".encode())
        digest.update(path.read_bytes())
    return f"{LOCAL_DIR}sha256:{digest.hexdigest()}"


def create_model(
    model_name: str, pretrained: str, weights: str | None, device: torch.device | None, precision: str
) -> tuple[OpenClipModel, ImageTransform]:
    """Build the model and its eval transform with open_clip, on `device` (None: the CPU)."""
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights, device=device or "cpu", precision=precision
        )
    # open_clip and huggingface_hub raise many types here; each one means the weights are unusable.
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"could not load weights {pretrained!r} for {model_name} ({exc}); without network access "
            "use CLIP_PRETRAINED=/path/to/checkpoint.pt (a local checkpoint file), or 'none' for random weights"
        ) from None
    return model, preprocess


def load_tokenizer(model_name: str) -> Tokenizer:
    """Return open_clip's tokenizer of the model: its own BPE, or the Hugging Face one its config names."""
    import open_clip

    try:
        return open_clip.get_tokenizer(model_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"{model_name} uses a Hugging Face tokenizer, which needs {exc.name or 'transformers'} "
            "(pip install -r requirements.txt)"
        ) from None
    # transformers and huggingface_hub raise many types for a missing or unreadable tokenizer.
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"could not load the tokenizer of {model_name} ({type(exc).__name__}: {exc}); a local-dir: folder "
            "holds its tokenizer files, a hub tokenizer needs network access or a warm Hugging Face cache"
        ) from None
