"""open_clip's eval transform as batched tensor ops from uint8: resize, centre crop, normalise (IMAGE_PREPROCESS=tensor).

The steps are read from the model's own transform (its size, interpolation, antialias, crop), so the
tensor path follows the model's preprocess config; a transform with a step it does not know (e.g.
resize_mode=longest, which pads) has no tensor path. Images of one size are resized together. The
resize runs in torchvision's tensor kernels (antialiased, as Pillow's), so a pixel can differ from
Pillow's by a rounding step: the vectors match open_clip's to a cosine of at least 0.9995
(tests/e2e/test_image_paths.py). An image already at the model's input size is not resized, and the
normalisation reads the same float32 table as the numpy tail (app.inference.preprocess): pixels that
Pillow resized give the very tensor open_clip's transform gives, bit for bit (IMAGE_PREPROCESS=pil-uint8).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize, ToTensor
from torchvision.transforms.v2 import functional as F2

# Steps of open_clip's transform that leave an RGB image as it is (the tensor path starts from RGB).
_PASS_THROUGH = {"MaybeConvertMode", "_convert_to_rgb"}


@dataclass(frozen=True, slots=True)
class _ResizeStep:
    size: list[int]
    interpolation: InterpolationMode
    max_size: int | None
    antialias: bool


class TensorPreprocess:
    """Resize, crop and normalise batches of uint8 3 × H × W tensors on one device."""

    def __init__(self, resize: _ResizeStep, crop: list[int] | None, table: np.ndarray, device: torch.device) -> None:
        self._resize = resize
        self._crop = crop
        final = crop or resize.size
        self.output_hw = (final[0], final[-1])
        self._device = device
        self._table = np.ascontiguousarray(table, dtype=np.float32)
        # On the GPU one gather reads all three channels' tables: entry c * 256 + value.
        self._flat = torch.from_numpy(self._table.reshape(-1)).to(device)
        self._offsets = torch.arange(3, dtype=torch.int32, device=device).view(1, 3, 1, 1) * 256

    @classmethod
    def from_transform(
        cls, transform: Callable[..., object], table: np.ndarray, device: torch.device
    ) -> TensorPreprocess | None:
        """Read the steps of an open_clip eval transform; None when one of them has no tensor equivalent here."""
        resize: _ResizeStep | None = None
        crop: list[int] | None = None
        for step in getattr(transform, "transforms", []):
            name = getattr(step, "__name__", type(step).__name__)
            if isinstance(step, Resize) and resize is None and crop is None:
                size = [step.size] if isinstance(step.size, int) else list(step.size)
                resize = _ResizeStep(size, step.interpolation, step.max_size, bool(step.antialias))
            elif isinstance(step, CenterCrop) and resize is not None and crop is None:
                crop = list(step.size)
            elif isinstance(step, (ToTensor, Normalize)) or name in _PASS_THROUGH:
                continue
            else:
                return None
        # Without a crop the output is square only when the resize names both sides.
        if resize is None or (crop is None and len(resize.size) != 2):
            return None
        return cls(resize, crop, table, device)

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return the model's float32 N × 3 × H × W input for uint8 3 × h × w images on this device."""
        out = torch.empty((len(images), 3, *self.output_hw), dtype=torch.float32, device=self._device)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            groups[tuple(image.shape)].append(index)
        for indices in groups.values():
            pixels = self._resized(_stacked([images[i] for i in indices]))
            rows = self._normalised(pixels)
            if len(indices) == len(images):
                return rows
            out[torch.tensor(indices, device=self._device)] = rows
        return out

    def _resized(self, batch: torch.Tensor) -> torch.Tensor:
        """Resize and crop a uint8 N × 3 × h × w batch as open_clip's transform would (no-ops at the right size)."""
        step = self._resize
        batch = F2.resize(batch, step.size, step.interpolation, step.max_size, step.antialias)
        if self._crop is not None:
            batch = F2.center_crop(batch, self._crop)
        return batch

    def _normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """Look each byte up in the normalisation table: the very float32 values of the numpy tail."""
        if pixels.device.type == "cpu":
            # numpy's take is several times faster than torch's indexing on the CPU, and starts no thread team.
            rows = np.empty(pixels.shape, dtype=np.float32)
            source = pixels.numpy()
            for channel in range(3):
                np.take(self._table[channel], source[:, channel], out=rows[:, channel], mode="clip")
            return torch.from_numpy(rows)
        return self._flat[pixels.int() + self._offsets]


def _stacked(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack 3 × h × w images into N × 3 × h × w without reordering their bytes.

    Pixels uploaded from height × width × 3 arrays are channels-last views: stacked as such (a plain copy,
    none for one image) they stay channels-last, which the resize kernels take as they are.
    """
    if len(images) == 1:
        return images[0].unsqueeze(0)
    if all(image.is_contiguous() for image in images):
        return torch.stack(images)
    return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)
