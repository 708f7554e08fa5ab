"""Decode JPEGs in batches on the model's device with torchcodec (JPEG_DECODE=engine).

torchcodec is PyTorch's maintained image decoder (torchvision's own is deprecated in its favour since
0.29). On CUDA it decodes a batch in one nvJPEG call on the GPU's hardware JPEG engines (A100, H100,
H200), or nvJPEG's GPU kernels where there are none; on the CPU it runs libjpeg-turbo, which lets the
same path run in CI. Its outputs come from torch's caching allocator (an out-of-memory error is torch's,
which the engine's splitting handles) and are EXIF-oriented, as Pillow's exif_transpose orients them.

A batch that the decoder refuses is split in halves until the image it refuses stands alone: that one
gets None (the engine then tries the decode threads' decoder on it, which gives today's pixels or
today's error) and the rest of the batch is decoded. On CUDA the decode runs on a stream of its own, so
that it can run on the JPEG engines while the previous batch's forward runs on the GPU's cores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch

from app.inference.payload import EncodedImage

log = logging.getLogger("app.inference.jpeg_batch")

DecodeFn = Callable[..., list[torch.Tensor]]


def load_decoder() -> DecodeFn:
    """Return torchcodec's batched JPEG decoder; raise ImportError when torchcodec is not installed."""
    from torchcodec.decoders import decode_jpeg  # type: ignore[attr-defined]  # re-exported without __all__

    # A list in, a list out (its annotation says a single tensor may come back too, for a single input).
    return cast(DecodeFn, decode_jpeg)


class JpegBatchDecoder:
    """Turn EncodedImages into uint8 3 × H × W tensors on one device, in as few decoder calls as it can."""

    def __init__(self, device: torch.device, decode: DecodeFn | None = None) -> None:
        self._device = device
        self._decode = decode or load_decoder()
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None  # type: ignore[no-untyped-call]

    def decode(self, images: Sequence[EncodedImage]) -> list[torch.Tensor | None]:
        """Return each image's pixels, or None for an image the decoder refused (all in one call when it can)."""
        out: list[torch.Tensor | None] = [None] * len(images)
        if images:
            self._isolating(images, list(range(len(images))), out)
        return out

    def _isolating(self, images: Sequence[EncodedImage], indices: list[int], out: list[torch.Tensor | None]) -> None:
        """Decode images[indices] into out; on a refusal, split until the refused image stands alone."""
        try:
            decoded = self._call([_source(images[i].data) for i in indices])
        except torch.cuda.OutOfMemoryError:
            raise  # the engine frees memory and retries the batch in halves
        except (RuntimeError, ValueError) as exc:
            if len(indices) == 1:
                log.info("the batched JPEG decoder refused an image (%s): the decode threads' decoder tries it", exc)
                return
            mid = len(indices) // 2
            self._isolating(images, indices[:mid], out)
            self._isolating(images, indices[mid:], out)
            return
        for index, tensor in zip(indices, decoded, strict=True):
            out[index] = tensor

    def _call(self, datas: list[bytes | torch.Tensor]) -> list[torch.Tensor]:
        if self._stream is None:
            return self._decode(datas, mode="RGB", device=self._device)
        consumer = torch.cuda.current_stream(self._device)
        with torch.cuda.stream(self._stream):
            # torchcodec waits for its stream before it returns: the pixels are complete here.
            decoded = self._decode(datas, mode="RGB", device=self._device)
        for tensor in decoded:
            # Used on the model's stream from now on: the allocator must not hand the memory back to the
            # decode stream before that stream's work on it is done.
            tensor.record_stream(consumer)
        return decoded


def _source(data: bytes | np.ndarray) -> bytes | torch.Tensor:
    """Return what the decoder reads: the bytes, or a uint8 tensor over the same memory (no copy)."""
    return data if isinstance(data, bytes) else torch.from_numpy(data)
