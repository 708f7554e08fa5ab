"""open_clip's transformer blocks with their linear layers on oneDNN, weights packed once (CPU, fp32).

torch's fp32 `nn.Linear` on CPU hands its weight to the BLAS, which re-packs it on every call; oneDNN
takes a weight packed once at load. Same products, summed in another order: outputs differ from
open_clip's by ~1e-6. `bench.limit` vs `bench.limit --torch-kernels` on the 2-core development CPU
(ViT-B-32): text +16-34% at batch 16, +14-17% at batch 64, images +15-20%. ClipEmbedder calls
`pack_blocks` on CPU in fp32 (CPU_PACKED_LINEAR=1); a model whose packed forward strays beyond
`TOLERANCE` keeps open_clip's blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, Transformer
from torch import nn

TOLERANCE = 1e-4
log = logging.getLogger("app.inference.model")


class PackedLinear(nn.Module):
    """A linear layer whose weight lives in oneDNN's packed layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        # The batch-size hint only picks the layout; any number of rows works.
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 256)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


class PackedBlock(nn.Module):
    """A self-attention ResidualAttentionBlock computing what it computes, on packed weights."""

    def __init__(self, block: ResidualAttentionBlock) -> None:
        super().__init__()
        attn = block.attn
        self.ln_1, self.ls_1, self.ln_2, self.ls_2 = block.ln_1, block.ls_1, block.ln_2, block.ls_2
        self.heads = attn.num_heads
        self.in_proj = PackedLinear(attn.in_proj_weight, attn.in_proj_bias)
        self.out_proj = PackedLinear(attn.out_proj.weight, attn.out_proj.bias)
        self.c_fc = PackedLinear(block.mlp.c_fc.weight, block.mlp.c_fc.bias)
        self.gelu = block.mlp.gelu
        self.c_proj = PackedLinear(block.mlp.c_proj.weight, block.mlp.c_proj.bias)
        self._dtype = block.get_weight_dtype()

    def get_weight_dtype(self) -> torch.dtype:
        """Answer open_clip's Transformer.get_cast_dtype."""
        return self._dtype

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.in_proj(self.ln_1(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # open_clip hands MultiheadAttention a float (additive) mask, whatever the mask's dtype.
        mask = attn_mask.to(q.dtype) if attn_mask is not None else None
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.ls_1(self.out_proj(attended.transpose(1, 2).reshape(b, n, d)))
        return x + self.ls_2(self.c_proj(self.gelu(self.c_fc(self.ln_2(x)))))


def _packable(module: nn.Module) -> bool:
    block: Any = module  # open_clip's block: its attributes are not typed on nn.Module
    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and block.get_weight_dtype() == torch.float32
    )


def pack_blocks(model: nn.Module, check: Callable[[], torch.Tensor]) -> int:
    """Swap every packable block for a PackedBlock if `check()` moves by TOLERANCE at most; return how many.

    `check` runs the model on fixed inputs and returns normalised vectors.
    """
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    swaps = [
        (t.resblocks, i, block)
        for t in model.modules()
        if isinstance(t, Transformer)
        for i, block in enumerate(t.resblocks)
        if _packable(block)
    ]
    if not swaps:
        return 0
    with torch.inference_mode():
        expected = check()
    try:
        for blocks, i, block in swaps:
            blocks[i] = PackedBlock(block)
        with torch.inference_mode():
            ok = bool(torch.allclose(check(), expected, rtol=0, atol=TOLERANCE))
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        # A torch build without these private oneDNN ops (AttributeError), or one that refuses them.
        log.warning("packed CPU kernels unavailable (%s: %s); keeping open_clip's blocks", type(exc).__name__, exc)
        ok = False
    if not ok:
        for blocks, i, block in swaps:
            blocks[i] = block
        return 0
    count = len(swaps)
    del swaps, block
    _return_freed_memory()
    return count


def _return_freed_memory() -> None:
    """Hand the heap pages freed with the unpacked weights back to the OS.

    glibc keeps them otherwise, and the packed server would hold more memory than one on torch's kernels.
    """
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass


def return_freed_memory() -> None:
    """Hand the heap pages freed since the last call back to the OS (an unloaded model's weights, say)."""
    _return_freed_memory()
