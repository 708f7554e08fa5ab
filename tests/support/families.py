"""Tiny random-weight models of each family the service serves, built here as open_clip `local-dir:` folders.

Each folder holds open_clip_config.json (model and preprocess config), seeded weights and, for the SigLIP
families, a Hugging Face tokenizer trained here on generated captions: nothing comes from the network.
The configs keep what sets each family apart (towers, pooling, tokenizer, padding, preprocessing) at a
size that runs in milliseconds:

- clip: open_clip's own ViT and text transformer, its BPE tokenizer (77 tokens), shortest side + centre crop;
- siglip: a timm ViT with attention pooling, a bidirectional text tower read at its last position, a
  T5-style Unigram tokenizer that pads with its end token to exactly 64, `squash` resize, mean/std 0.5;
- siglip2: as siglip, with a Gemma-style BPE tokenizer that pads with 0 and tanh-approximated GELU;
- mobileclip: timm's FastViT (MobileCLIP's image tower), a bidirectional text tower, mean 0 and std 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

WORDS = [
    "a", "photo", "of", "the", "cat", "dog", "car", "red", "blue", "green", "house", "tree", "person",
    "running", "beach", "sunset", "drawing", "engine", "side", "pencil", "seen", "from", "small", "large",
    "two", "three", "on", "in", "at", "with", "bird", "boat", "city", "night", "snow",
]  # fmt: skip
CAPTIONS = [" ".join(np.random.default_rng(seed).choice(WORDS, 7)) for seed in range(300)]
FAMILIES = ("clip", "siglip", "siglip2", "mobileclip")

_CLIP_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
_SIGLIP_VISION = {
    "image_size": 160,
    "timm_model_name": "test_vit",
    "timm_model_pretrained": False,
    "timm_pool": "map",
    "timm_proj": "none",
}
_HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}


def _siglip_text(vocab_size: int, **extra: object) -> dict[str, object]:
    return {
        "context_length": 64,
        "vocab_size": vocab_size,
        "hf_tokenizer_name": "local",  # a local-dir: folder's tokenizer is read from the folder
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "width": 64,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
        **extra,
    }


def _hf_tokenizer(folder: Path, kind: str) -> int:
    """Train a tiny tokenizer on CAPTIONS, save it as Hugging Face files in `folder`; return its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "siglip":  # T5's: a Unigram model, padded with its end token </s> (id 1)
        specials = ["<pad>", "</s>", "<unk>"]
        tokenizer = Tokenizer(models.Unigram())
        trainer: object = trainers.UnigramTrainer(vocab_size=150, special_tokens=specials, unk_token="<unk>")
        eos, pad = "</s>", "</s>"
    else:  # Gemma's: BPE, padded with <pad> (id 0)
        specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=150, special_tokens=specials)
        eos, pad = "<eos>", "<pad>"
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(CAPTIONS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, eos_token=eos, unk_token="<unk>")
    fast.save_pretrained(folder)
    return int(tokenizer.get_vocab_size())


def family_config(family: str, folder: Path) -> dict[str, object]:
    """Return the open_clip_config.json of a family's tiny model (writing its tokenizer files into `folder`)."""
    if family == "clip":
        vision = {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16}
        return {"model_cfg": {"embed_dim": 64, "vision_cfg": vision, "text_cfg": _CLIP_TEXT}, "preprocess_cfg": {}}
    if family in ("siglip", "siglip2"):
        vocab = _hf_tokenizer(folder, family)
        extra = {"act_kwargs": {"approximate": "tanh"}} if family == "siglip2" else {}
        model = {
            "embed_dim": 64,
            "init_logit_bias": -10,
            "custom_text": True,
            "vision_cfg": _SIGLIP_VISION,
            "text_cfg": _siglip_text(vocab, **extra),
        }
        return {"model_cfg": model, "preprocess_cfg": _HALF}
    if family == "mobileclip":
        vision = {
            "timm_model_name": "fastvit_mci0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": None,
            "image_size": 64,
        }
        text = {**_CLIP_TEXT, "no_causal_mask": True}
        preprocess = {"mean": [0.0] * 3, "std": [1.0] * 3, "interpolation": "bilinear", "resize_mode": "shortest"}
        return {
            "model_cfg": {"embed_dim": 64, "vision_cfg": vision, "text_cfg": text, "custom_text": True},
            "preprocess_cfg": preprocess,
        }
    raise ValueError(f"unknown family {family!r}")


def build_family(family: str, folder: Path, seed: int = 7) -> str:
    """Write a family's tiny model into `folder` (config, tokenizer, seeded weights); return its `local-dir:` name."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(family_config(family, folder)))
    name = f"local-dir:{folder}"
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    with torch.no_grad():  # open_clip zeroes some layers at init; random values make every layer count
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return name
