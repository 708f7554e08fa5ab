"""One open_clip model's towers: dropping the one not served, its memory, its preprocessing and token counts."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch

# The text tower of open_clip's CLIP class, as attributes of the model itself (CustomTextCLIP has `text`).
_CLIP_TEXT_PARTS = (
    "transformer",
    "token_embedding",
    "positional_embedding",
    "ln_final",
    "text_projection",
    "attn_mask",
)


def drop_tower(model: torch.nn.Module, keep: str) -> None:
    """Release the tower that `keep` ("image" or "text") does not name; "both" keeps both."""
    m: Any = model  # open_clip's CLIP or CustomTextCLIP: their attributes are not typed on nn.Module
    if keep == "text":
        m.visual = None
    elif keep == "image":
        if hasattr(m, "text"):
            m.text = None
        else:
            for part in _CLIP_TEXT_PARTS:
                if hasattr(m, part):
                    setattr(m, part, None)
    gc.collect()


def weights_bytes(model: torch.nn.Module) -> int:
    """Return the bytes the model's parameters and buffers take (what loading it costs the device)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """How the model wants its images: open_clip's preprocess config (model.visual.preprocess_cfg)."""

    size: tuple[int, int] = (224, 224)
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def of(cls, model: torch.nn.Module) -> ImageConfig:
        """Read the config open_clip attached to the model's image tower."""
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[-1]))
        return cls(
            size=hw,
            resize_mode=str(cfg.get("resize_mode", "shortest")),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            mean=tuple(float(v) for v in cfg.get("mean", ())),
            std=tuple(float(v) for v in cfg.get("std", ())),
        )


def count_tokens(tokenizer: Any, text: str) -> int:
    """Return how many tokens the model sees of `text`: start and end markers in, the context at most.

    open_clip's own tokenizer pads with 0 after its end marker; a Hugging Face tokenizer (SigLIP) may pad
    with a real token id, so its count comes from the attention mask of the same call open_clip makes.
    """
    inner = getattr(tokenizer, "tokenizer", None)
    clean = getattr(tokenizer, "clean_fn", None)
    if inner is None or clean is None or getattr(tokenizer, "tokenizer_mode", "") == "clips":
        return int(torch.count_nonzero(tokenizer([text])[0]))
    length = int(tokenizer.context_length)
    encoded = inner([clean(text)], max_length=length, padding="max_length", truncation=True)
    return int(sum(encoded["attention_mask"][0]))
