"""Packed oneDNN linear layers on CPU give open_clip's vectors, or are not used at all."""

from __future__ import annotations

import itertools
import platform
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch

from app.inference.cpu_kernels import PackedBlock, pack_blocks
from app.inference.model import ClipEmbedder


@pytest.fixture(scope="module")
def reference(checkpoint):
    model, _, _ = open_clip.create_model_and_transforms("clip-tiny", pretrained=checkpoint)
    return model.eval()


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [*model.transformer.resblocks, *model.visual.transformer.resblocks]


def test_embedder_packs_every_block_of_both_towers(checkpoint):
    embedder = ClipEmbedder("clip-tiny", checkpoint, "cpu", packed_linear=True)
    assert embedder.info.kernels == "onednn-packed"
    assert [type(b) for b in _blocks(embedder.model)] == [PackedBlock] * 4


@pytest.mark.parametrize("packed_linear", [False, True])
def test_embedder_vectors_match_open_clip_forward(checkpoint, reference, packed_linear):
    embedder = ClipEmbedder("clip-tiny", checkpoint, "cpu", packed_linear=packed_linear)
    tokenizer = open_clip.get_tokenizer("clip-tiny")
    texts = ["a cat", "a much longer caption about a dog running on a beach at sunset", "x " * 100]
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want_text = torch.nn.functional.normalize(reference.encode_text(tokenizer(texts)), dim=-1).numpy()
        want_image = torch.nn.functional.normalize(reference.encode_image(pixels), dim=-1).numpy()
    np.testing.assert_allclose(embedder.encode_texts([embedder.tokenize(t) for t in texts]), want_text, atol=1e-5)
    np.testing.assert_allclose(embedder.encode_images(list(pixels)), want_image, atol=1e-5)


def test_embedder_keeps_torch_kernels_when_packing_is_off(checkpoint):
    embedder = ClipEmbedder("clip-tiny", checkpoint, "cpu")
    assert embedder.info.kernels == "torch"
    assert PackedBlock not in {type(b) for b in _blocks(embedder.model)}


def test_pack_blocks_restores_open_clip_blocks_when_the_check_moves(reference):
    model = open_clip.create_model("clip-tiny").eval()
    model.load_state_dict(reference.state_dict())
    before = _blocks(model)
    # A check whose answer changes by 1 on every call: as if packing broke the vectors.
    calls = itertools.count()
    assert pack_blocks(model, lambda: torch.full((4,), float(next(calls)))) == 0
    assert all(a is b for a, b in zip(_blocks(model), before, strict=True))


@pytest.mark.parametrize("error", [AttributeError, RuntimeError, NotImplementedError])
def test_pack_blocks_keeps_open_clip_blocks_when_the_ops_are_missing(reference, monkeypatch, error):
    model = open_clip.create_model("clip-tiny").eval()
    model.load_state_dict(reference.state_dict())
    before = _blocks(model)

    def missing(*_: object) -> torch.Tensor:
        raise error("no such op in this torch build")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", missing)
    assert pack_blocks(model, lambda: torch.zeros(4)) == 0
    assert all(a is b for a, b in zip(_blocks(model), before, strict=True))


def test_pack_blocks_swaps_blocks_when_the_check_holds(reference):
    model = open_clip.create_model("clip-tiny").eval()
    model.load_state_dict(reference.state_dict())
    assert pack_blocks(model, lambda: torch.zeros(4)) == 4
    tokens = open_clip.get_tokenizer("clip-tiny")(["a dog"])
    with torch.inference_mode():
        np.testing.assert_allclose(model.encode_text(tokens), reference.encode_text(tokens), atol=1e-5)


_HEAP_SCRIPT = """
import os
from app.inference.cpu_kernels import _return_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [bytearray(64 * 1024) for _ in range(2048)]  # 128 MB of heap chunks, below glibc's mmap threshold
guard = bytearray(64 * 1024)  # above them, so that freeing them cannot shrink the heap from its top
del blocks
before = rss()
_return_freed_memory()
print(before - rss())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_return_freed_memory_hands_freed_heap_pages_back_to_the_os():
    # A fresh interpreter: the test process's heap holds whatever earlier tests left in it.
    proc = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    assert int(proc.stdout) > 96 * 1024 * 1024
