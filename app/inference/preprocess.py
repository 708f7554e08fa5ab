"""open_clip's image preprocessing, with its tensor tail done in numpy.

Why: libgomp gives every thread that runs a parallel torch op its own team of OpenMP workers. Once
those outnumber the cores, every OpenMP barrier sleeps instead of spinning, and the model's forward
pass on the CPU no longer keeps every core busy. Decoding threads that ran open_clip's
ToTensor/Normalize each started such a team. Done here in numpy with the same float32 operations in
the same order (x / 255, then - mean, then / std), the result is bit-identical. A byte has 256 values,
so those operations run once per value and channel, into a lookup table that each pixel then reads,
which is cheaper than the arithmetic on every pixel (figures in docs/performance.md: the image path;
threads and OpenMP).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import Compose, Normalize

from app.inference.tensor_preprocess import TensorPreprocess

_TO_TENSOR = {"ToTensor", "MaybeToTensor"}


class Preprocess:
    """Apply an open_clip eval transform; run its ToTensor + Normalize tail in numpy when it has one."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self._transform = transform
        steps = list(getattr(transform, "transforms", []))
        self._split = len(steps) >= 2 and type(steps[-2]).__name__ in _TO_TENSOR and isinstance(steps[-1], Normalize)
        if self._split:
            norm: Normalize = steps[-1]
            self._image_steps = Compose(steps[:-2])
            self._tensor_steps = Compose(steps[-2:])
            # As torchvision does: the Python floats rounded to float32; the same operations, in order.
            mean = np.asarray(norm.mean, dtype=np.float32).reshape(-1, 1)
            std = np.asarray(norm.std, dtype=np.float32).reshape(-1, 1)
            values = np.arange(256, dtype=np.float32).reshape(1, -1)
            # A one-value mean and std apply to all three channels, as in torchvision.
            self._table = np.broadcast_to((values / np.float32(255.0) - mean) / std, (3, 256)).copy()

    @property
    def uses_numpy_tail(self) -> bool:
        """Say whether the tensor tail runs in numpy (else the transform runs as open_clip wrote it)."""
        return self._split

    def resized(self, image: Image.Image) -> np.ndarray | None:
        """Return the transform's image steps' RGB uint8 pixels (resized and cropped), before ToTensor and Normalize.

        None when the transform has no ToTensor + Normalize tail, or its image steps do not end in RGB.
        """
        if not self._split:
            return None
        img = self._image_steps(image)
        return np.asarray(img) if isinstance(img, Image.Image) and img.mode == "RGB" else None

    def tensor_path(self, device: torch.device) -> TensorPreprocess | None:
        """Return the transform as batched tensor ops on `device`, with this tail's table; None if it has none."""
        return TensorPreprocess.from_transform(self._transform, self._table, device) if self._split else None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not self._split:
            return self._transform(image)
        img = self._image_steps(image)
        if not isinstance(img, Image.Image) or img.mode != "RGB":
            return self._tensor_steps(img)  # ToTensor treats other modes differently: keep its own path
        pixels = np.asarray(img)
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        for channel in range(3):
            # A byte cannot index past 256 entries: "clip" skips the bounds check and the temporary
            # buffer that the default mode writes through.
            np.take(self._table[channel], pixels[:, :, channel], out=out[channel], mode="clip")
        return torch.from_numpy(out)
