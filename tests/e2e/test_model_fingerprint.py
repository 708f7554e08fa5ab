"""The embedding space's fingerprint (app.inference.fingerprint): equal exactly when the vectors are."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from app.inference.fingerprint import embedding_fingerprint, weights_sha256
from app.inference.loading import load_clip
from app.inference.model import CONFIG_DIR
from tests.support.data import tiny_settings


def save_tiny(path: Path, seed: int) -> str:
    """Save a clip-tiny checkpoint drawn with `seed` at `path` (replacing what is there)."""
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(seed)
    torch.save(open_clip.create_model("clip-tiny").state_dict(), path)
    return str(path)


def fingerprint(checkpoint: str, **settings: object) -> str:
    return load_clip(tiny_settings(clip_pretrained=checkpoint, **settings)).info.fingerprint


def test_fingerprint_is_the_same_for_the_same_weights_and_settings(checkpoint):
    first, second = fingerprint(checkpoint), fingerprint(checkpoint)
    assert first == second and len(first) == 64 and int(first, 16) >= 0


@pytest.mark.parametrize(
    "changed",
    [{"fast_decode": False}, {"model_dtype": "bf16"}, {"cpu_packed_linear": False}],
    ids=["fast-decode", "dtype", "kernels"],
)
def test_fingerprint_follows_what_changes_a_vector_and_only_that(checkpoint, changed):
    # FAST_DECODE and the precision change vectors; the packed CPU kernels give open_clip's to 1e-4.
    moves = "cpu_packed_linear" not in changed
    assert (fingerprint(checkpoint, **changed) != fingerprint(checkpoint)) is moves


def test_fingerprint_changes_when_the_checkpoint_is_replaced_at_the_same_path(tmp_path):
    path = tmp_path / "model.pt"
    before = fingerprint(save_tiny(path, seed=1))
    after = fingerprint(save_tiny(path, seed=2))
    assert before != after


def test_random_weights_are_a_space_of_their_own_each_time():
    # CLIP_PRETRAINED=none draws new weights in every process: no two share vectors.
    assert fingerprint("none") != fingerprint("none")


def test_weights_digest_covers_every_tensor_byte():
    open_clip.add_model_config(CONFIG_DIR)
    model = open_clip.create_model("clip-tiny")
    before = weights_sha256(model)
    with torch.no_grad():
        model.logit_scale.add_(1e-6)  # one scalar among all the weights
    assert weights_sha256(model) != before


def test_fingerprint_names_the_device_kind_not_its_number():
    common = {"model": "m", "weights": "w", "dtype": "float16", "preprocess": "p", "context_length": 77}
    gpus = {embedding_fingerprint(device=d, fast_decode=True, **common) for d in ("cuda", "cuda:0", "cuda:3")}
    assert len(gpus) == 1 and embedding_fingerprint(device="cpu", fast_decode=True, **common) not in gpus
