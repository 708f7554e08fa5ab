"""The tensor path of open_clip's eval transform: read from the transform, bit-exact where Pillow resized,
within rounding of Pillow where the tensor kernels resize (the vectors: tests/e2e/test_image_paths.py)."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from app.inference.preprocess import Preprocess
from tests.support.photos import photo

CPU = torch.device("cpu")


def _chw(picture) -> torch.Tensor:
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1)


@pytest.mark.parametrize(
    ("resize_mode", "size", "output"),
    [("shortest", 224, (224, 224)), ("squash", 224, (224, 224)), ("shortest", (64, 48), None), ("longest", 224, None)],
)
def test_tensor_path_is_read_from_the_transform_or_absent(resize_mode, size, output):
    transform = open_clip.image_transform(size, is_train=False, resize_mode=resize_mode)
    path = Preprocess(transform).tensor_path(CPU)
    assert (path.output_hw if path else None) == output


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
@pytest.mark.parametrize("size", [(640, 480), (225, 224), (1, 1), (300, 1000), (224, 224)])
def test_tensor_path_on_pillow_resized_pixels_is_bit_identical_to_open_clip(resize_mode, size):
    transform = open_clip.image_transform(224, is_train=False, resize_mode=resize_mode)
    ours = Preprocess(transform)
    picture = photo(*size, seed=3)
    resized = ours.resized(picture)
    assert resized is not None and resized.shape == (224, 224, 3)
    assert torch.equal(ours.tensor_path(CPU)([_chw(resized)])[0], transform(picture))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
@pytest.mark.parametrize("size", [(1280, 960), (320, 240), (64, 48), (333, 500), (224, 224)])
def test_tensor_path_resizes_within_rounding_of_pillow(interpolation, resize_mode, size):
    transform = open_clip.image_transform(224, is_train=False, resize_mode=resize_mode, interpolation=interpolation)
    ours = Preprocess(transform)
    picture = photo(*size, seed=4)
    want = np.asarray(ours.resized(picture), dtype=np.int16)
    tensor = ours.tensor_path(CPU)._resized(_chw(picture).unsqueeze(0))[0]
    diff = np.abs(tensor.permute(1, 2, 0).numpy().astype(np.int16) - want)
    # Pillow rounds and clamps to bytes between its horizontal and its vertical pass; torch's kernels need not,
    # which moves a byte by one here and there, and by a few where bicubic rings at a sharp edge.
    assert diff.mean() <= 0.3
    assert np.mean(diff > 1) <= 0.005


def test_tensor_path_batches_mixed_sizes_in_input_order():
    transform = open_clip.image_transform(64, is_train=False)
    path = Preprocess(transform).tensor_path(CPU)
    pictures = [photo(*size, seed=i) for i, size in enumerate([(120, 90), (64, 64), (120, 90), (50, 200), (120, 90)])]
    together = path([_chw(p) for p in pictures])
    alone = torch.cat([path([_chw(p)]) for p in pictures])
    assert together.shape == (5, 3, 64, 64)
    assert torch.equal(together, alone)
