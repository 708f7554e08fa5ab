"""The open_clip model behind a small interface: preprocess, tokenize, encode batches."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger("app.model")

CONFIG_DIR = Path(__file__).parent / "model_configs"


class ModelLoadError(Exception):
    """The model cannot be loaded; the message says what to change."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What /health reports about the loaded model."""

    model: str
    pretrained: str
    device: str
    dtype: str
    dim: int
    image_size: int
    context_length: int
    load_seconds: float = 0.0


class Embedder(Protocol):
    """What the engine needs from a model; the real one wraps open_clip."""

    info: ModelInfo

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Turn an RGB picture into the model's input tensor (CPU, float32)."""
        ...

    def tokenize(self, text: str) -> torch.Tensor:
        """Turn a text into a 1-D tensor of token ids (truncated to the context length)."""
        ...

    def encode_images(self, pixels: list[torch.Tensor]) -> np.ndarray:
        """Return L2-normalised float32 vectors, one row per input, in order."""
        ...

    def _stage(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """Stack into one reusable pinned buffer; safe because results are read back before reuse."""
        n = len(pixels)
        if self._staging is None or self._staging.shape[0] < n:
            self._staging = torch.empty((max(n, 64), *pixels[0].shape), pin_memory=True)
        return torch.stack(pixels, out=self._staging[:n])

    def encode_texts(self, tokens: list[torch.Tensor]) -> np.ndarray:
        """Return L2-normalised float32 vectors, one row per input, in order."""
        ...


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


def _register_bundled_configs() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def _resolve_pretrained(model_name: str, pretrained: str) -> str | None:
    """Return what to hand open_clip as `pretrained`, or explain why it cannot work."""
    import open_clip

    value = pretrained.strip()
    if value.lower() in {"", "none"}:
        log.warning("CLIP_PRETRAINED=none: random weights, embeddings are meaningless (dev only)")
        return None
    if os.path.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors")):
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


class ClipEmbedder:
    """An open_clip model in eval mode, fp16 on CUDA and fp32 on CPU."""

    def __init__(self, model_name: str, pretrained: str, device: str) -> None:
        import open_clip

        started = time.perf_counter()
        _register_bundled_configs()
        if model_name not in open_clip.list_models():
            raise ModelLoadError(
                f"CLIP_MODEL={model_name!r} is not an open_clip model or bundled config "
                "(e.g. ViT-B-32, ViT-L-14, or clip-tiny for tests)"
            )
        weights = _resolve_pretrained(model_name, pretrained)
        self.device = torch.device(resolve_device(device))
        precision = "fp16" if self.device.type == "cuda" else "fp32"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=weights, device=self.device, precision=precision
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not load weights {pretrained!r} for {model_name} ({exc}); without network access "
                "use CLIP_PRETRAINED=/path/to/checkpoint.pt (a local checkpoint file), or 'none' for random weights"
            ) from None
        self.model = model.eval()
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(model_name)
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._text = TextTower(model)
        self._staging: torch.Tensor | None = None
        with torch.inference_mode():
            probe = torch.zeros(1, 3, *self._image_hw(), device=self.device, dtype=self._dtype)
            dim = int(model.encode_image(probe).shape[-1])
        self.info = ModelInfo(
            model=model_name,
            pretrained=pretrained if weights is not None else "none",
            device=str(self.device),
            dtype=str(self._dtype).removeprefix("torch."),
            dim=dim,
            image_size=self._image_hw()[0],
            context_length=int(self._tokenizer.context_length),
            load_seconds=time.perf_counter() - started,
        )

    def _image_hw(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    def tokenize(self, text: str) -> torch.Tensor:
        return self._tokenizer([text])[0]

    def encode_images(self, pixels: list[torch.Tensor]) -> np.ndarray:
        if self.device.type == "cuda":
            batch = self._stage(pixels).to(self.device, non_blocking=True)
        else:
            batch = torch.stack(pixels)
        with torch.inference_mode():
            features = self.model.encode_image(batch.to(self._dtype))
            return _normalised(features)

    def _stage(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """Stack into one reusable pinned buffer; safe because results are read back before reuse."""
        n = len(pixels)
        if self._staging is None or self._staging.shape[0] < n:
            self._staging = torch.empty((max(n, 64), *pixels[0].shape), pin_memory=True)
        return torch.stack(pixels, out=self._staging[:n])

    def encode_texts(self, tokens: list[torch.Tensor]) -> np.ndarray:
        batch = torch.stack(tokens).to(self.device, non_blocking=True)
        with torch.inference_mode():
            return _normalised(self._text(batch))

    def warm_up(self) -> None:
        """Run one image and one text forward so the first request pays no one-off costs."""
        h, w = self._image_hw()
        self.encode_images([torch.zeros(3, h, w)])
        self.encode_texts([self.tokenize("warm-up")])


def _normalised(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=-1).cpu().numpy()


class TextTower:
    """open_clip's encode_text, run only over the positions that hold tokens.

    With a causal mask, position i attends to positions <= i only, and end-of-text pooling reads
    one position at or before the last token; positions after the longest sequence in a batch
    cannot change any pooled vector, so they are skipped. Other text towers use encode_text as is.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._truncate = (
            getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) in ("argmax", "eos")
            and hasattr(model, "token_embedding")
            and hasattr(model, "positional_embedding")
        )

    @property
    def truncates(self) -> bool:
        """Say whether the padding-free path is in use for this model."""
        return self._truncate

    def __call__(self, text: torch.Tensor) -> torch.Tensor:
        m = self._model
        if not self._truncate:
            return m.encode_text(text)
        # Pad id is 0, but so is a real token ("!"): use the last non-pad position, not a count.
        positions = torch.arange(1, text.shape[1] + 1, device=text.device)
        length = int(((text != 0) * positions).max().item()) or 1
        text = text[:, :length]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(text).to(cast_dtype)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = _pool(x, text, m.text_pool_type, getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x


def _pool(x: torch.Tensor, text: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    from open_clip.transformer import text_global_pool

    return text_global_pool(x, text, pool_type, eos_token_id=eos_id)
