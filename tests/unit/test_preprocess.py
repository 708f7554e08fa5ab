"""Image preprocessing: open_clip's transform, bit for bit, without starting torch thread teams."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, Resize, ToTensor

from app.inference.preprocess import Preprocess


def _image(size: tuple[int, int], mode: str, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("size", [(640, 480), (225, 224), (1, 1), (300, 1000)])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
@pytest.mark.parametrize("norm", [{}, {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}], ids=["openai", "half"])
def test_preprocess_matches_open_clip_transform_bit_for_bit(resize_mode, size, mode, norm):
    transform = open_clip.image_transform(224, is_train=False, resize_mode=resize_mode, **norm)
    image = _image(size, mode)
    ours = Preprocess(transform)
    assert ours.uses_numpy_tail
    assert torch.equal(ours(image), transform(image))


@pytest.mark.parametrize("norm", [{}, {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}], ids=["openai", "half"])
def test_preprocess_matches_open_clip_for_every_byte_value_in_every_channel(norm):
    transform = open_clip.image_transform(16, is_train=False, **norm)
    # 16x16 pixels: each channel holds every value 0..255 once, in a different order per channel.
    values = np.arange(256, dtype=np.uint8)
    pixels = np.stack([values, values[::-1], np.roll(values, 85)], axis=-1).reshape(16, 16, 3)
    image = Image.fromarray(pixels)
    assert torch.equal(Preprocess(transform)(image), transform(image))


def test_preprocess_runs_a_transform_without_a_normalize_tail_as_is():
    transform = Compose([Resize(8), CenterCrop(8), ToTensor()])
    image = _image((20, 10), "RGB")
    ours = Preprocess(transform)
    assert not ours.uses_numpy_tail
    assert torch.equal(ours(image), transform(image))


def _threads_started_by(fn, image: Image.Image) -> int:
    """Run fn(image) on a fresh thread; return how many new OS threads of this process it left behind.

    The fewest of three tries: a thread started meanwhile by something else in the test process
    (another test's server winding down, say) is not fn's; fn's own team is left behind every time.
    """
    counts = []
    for _ in range(3):
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: None).result()
            before = set(os.listdir("/proc/self/task"))
            pool.submit(fn, image).result()
            counts.append(len(set(os.listdir("/proc/self/task")) - before))
    return min(counts)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux /proc")
def test_preprocess_on_a_decode_thread_starts_no_torch_worker_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        transform = open_clip.image_transform(224, is_train=False)
        image = _image((640, 480), "RGB")
        theirs = _threads_started_by(transform, image)
        ours = _threads_started_by(Preprocess(transform), image)
    finally:
        torch.set_num_threads(previous)
    if theirs == 0:
        pytest.skip("this torch build starts no OpenMP team for the tensor transforms")
    assert ours == 0
