"""What the engine gets for one image: model-ready pixels, RGB bytes still to preprocess, or a JPEG still to decode.

Every form is plain data (bytes, a numpy array, a tensor) and the header facts read before any pixel was
decoded, so that it can cross a process boundary as it is (shared memory) and be handled in batches by the
process that runs the model (app.inference.image_batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What an image's header says, read and checked (format, pixel budget) before any pixel is decoded."""

    width: int  # as stored, before EXIF orientation
    height: int
    orientation: int = 1  # EXIF orientation, 1..8; 1 when absent

    @property
    def pixels(self) -> int:
        """Return width × height."""
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """A baseline JPEG for the engine to decode in a batch (JPEG_DECODE=engine).

    `data` is the JPEG's bytes, or (in an engine process) a uint8 view of them in a worker's shared memory.
    """

    data: bytes | np.ndarray
    header: ImageHeader

    def encoded(self) -> bytes:
        """Return the JPEG's bytes (a copy of a view)."""
        return self.data if isinstance(self.data, bytes) else self.data.tobytes()


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """Oriented RGB pixels, uint8, height × width × 3, for the engine to resize, crop and normalise."""

    pixels: np.ndarray


# A float32 3 × H × W tensor is the model's input as open_clip's transform makes it (IMAGE_PREPROCESS=pil).
ImagePayload: TypeAlias = torch.Tensor | DecodedImage | EncodedImage
