"""open_clip's text forward without the computation on padding."""

from __future__ import annotations

from typing import Any

import torch
from open_clip.transformer import text_global_pool


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
        m: Any = self._model  # open_clip's CLIP: its attributes are not typed on nn.Module
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
        x = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x
