"""How images reach the image tower beyond open_clip's own transform: the settings of IMAGE_PREPROCESS,
JPEG_DECODE and CUDA_BLOCKING_WAIT, what the decode threads hand the engine under them, and one batch's
forward pass from payloads to vectors.

With IMAGE_PREPROCESS=pil, JPEG_DECODE=pool and CUDA_BLOCKING_WAIT=0 (the defaults) ClipEmbedder keeps
today's path; ENGINE_OVERLAP=1 runs the same float32 batch through `start`. Either way the vectors are
bit-identical to today's.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from app.inference.decode import decode_image
from app.inference.image_batch import ImageBatcher
from app.inference.jpeg_batch import JpegBatchDecoder
from app.inference.payload import DecodedImage, EncodedImage, ImageHeader, ImagePayload
from app.inference.preprocess import Preprocess
from app.inference.readback import PendingVectors, start_readback

PreprocessMode = Literal["pil", "pil-uint8", "tensor"]


class ImagePathError(Exception):
    """The image settings cannot work with this model or this install; the message says what to change."""


class NoTensorPath(ImagePathError):
    """The model's preprocess config has a step the tensor path cannot do (e.g. resize_mode=longest, which pads)."""


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """The Engine section's settings about images (app.settings)."""

    preprocess: PreprocessMode = "pil"
    jpeg_decode: Literal["pool", "engine"] = "pool"
    blocking_wait: bool = False
    max_pixels: int = 40_000_000  # for a JPEG the batched decoder refused, decoded alone...
    fast_decode: bool = True  # ...at a reduced size, as the decode threads would

    @property
    def kind(self) -> str:
        """Name how images become model inputs, as far as it moves vectors (`pil-uint8` gives `pil`'s very pixels)."""
        preprocess = "pil" if self.preprocess == "pil-uint8" else self.preprocess
        return f"{preprocess}/{self.jpeg_decode}"

    @property
    def plain(self) -> bool:
        """Say whether these are the defaults: today's path, nothing of this module runs."""
        return self.preprocess == "pil" and self.jpeg_decode == "pool" and not self.blocking_wait


def image_payload(mode: PreprocessMode, preprocess: Preprocess, image: Image.Image) -> ImagePayload:
    """Return what the decode threads hand the engine for a decoded RGB picture under IMAGE_PREPROCESS=`mode`."""
    if mode == "tensor":
        return DecodedImage(np.asarray(image))
    if mode == "pil-uint8":
        resized = preprocess.resized(image)
        if resized is not None:
            return DecodedImage(resized)
    return preprocess(image)


class ImageTower:
    """Payloads for the decode threads to make; batches of them to vectors on the model's device."""

    def __init__(
        self,
        options: ImageOptions,
        preprocess: Preprocess,
        forward: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        dtype: torch.dtype,
        padded_size: Callable[[int], int],
        image_size: int,
    ) -> None:
        self.options = options
        self._draft_size = image_size if options.fast_decode else None
        self._preprocess = preprocess
        self._forward = forward
        self._device = device
        self._dtype = dtype
        self._padded_size = padded_size
        tensor_path = None
        if options.preprocess != "pil" or options.jpeg_decode == "engine":
            tensor_path = preprocess.tensor_path(device)
            if tensor_path is None:
                raise NoTensorPath(
                    "this model's preprocess config has no tensor path (only a resize and a centre crop, or a "
                    "square resize, have one): set IMAGE_PREPROCESS=pil and JPEG_DECODE=pool"
                )
        decoder = None
        if options.jpeg_decode == "engine":
            try:
                decoder = JpegBatchDecoder(device)
            except ImportError:
                raise ImagePathError(
                    "JPEG_DECODE=engine needs torchcodec (pip install -r requirements.txt), or set JPEG_DECODE=pool"
                ) from None
        self._batcher = ImageBatcher(device, tensor_path, decoder, self._decode_alone)

    def payload(self, image: Image.Image) -> ImagePayload:
        """Return what the decode threads hand the engine for a decoded RGB picture."""
        return image_payload(self.options.preprocess, self._preprocess, image)

    def inputs(self, payloads: Sequence[ImagePayload]) -> torch.Tensor | None:
        """Return the batch the forward pass would see (float32, on the device): for checking a path's pixels."""
        with torch.inference_mode():
            return self._batcher.assemble(payloads).pixels

    def start(self, payloads: Sequence[ImagePayload]) -> PendingVectors:
        """Assemble the batch, run the forward pass, and start bringing the vectors back."""
        with torch.inference_mode():
            assembled = self._batcher.assemble(payloads)
            vectors = None
            if assembled.pixels is not None:
                batch = assembled.pixels
                n = batch.shape[0]
                padded = self._padded_size(n)
                if padded > n:
                    batch = torch.cat([batch, batch.new_zeros((padded - n, *batch.shape[1:]))])
                features = self._forward(batch.to(self._dtype))[:n]
                vectors = F.normalize(features.float(), dim=-1)
            return start_readback(vectors, assembled.failures, len(payloads), blocking=self.options.blocking_wait)

    def warm_up(self) -> None:
        """Run each kind of payload once, so that kernels (and the decoder) load before the first request."""
        picture = Image.new("RGB", (97, 71), (120, 30, 200))
        payloads = [self.payload(picture)]
        if self.options.jpeg_decode == "engine":
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG")
            payloads.append(EncodedImage(buffer.getvalue(), ImageHeader(*picture.size)))
        self.start(payloads).wait()

    def _decode_alone(self, data: bytes) -> np.ndarray:
        return np.asarray(decode_image(data, max_pixels=self.options.max_pixels, draft_size=self._draft_size))
