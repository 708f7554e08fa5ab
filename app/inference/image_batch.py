"""Turn one engine batch of image payloads into the model's input on its device.

Float32 tensors (open_clip's transform, run on the decode threads) are stacked as they are. RGB bytes and
JPEGs become uint8 tensors on the device, in chunks of at most CHUNK_PIXELS so that a batch of large
images never holds them all at once, and go through the tensor path (app.inference.tensor_preprocess)
together. A JPEG the batched decoder refuses goes to the decode threads' decoder, here, alone: it gives
today's pixels or today's error, and the error fails that image only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from app.errors import ServiceError
from app.inference.jpeg_batch import JpegBatchDecoder
from app.inference.payload import DecodedImage, EncodedImage, ImagePayload
from app.inference.tensor_preprocess import TensorPreprocess

# Pixels of one chunk of uint8 images on the device (3 bytes each before the resize).
CHUNK_PIXELS = 64_000_000
# Decode bytes the batched decoder refused: RGB uint8 height × width × 3, or a ServiceError.
Fallback = Callable[[bytes], np.ndarray]


@dataclass(slots=True)
class Assembled:
    """A batch's model input: one row per payload that has one, in payload order, and the rest's errors."""

    pixels: torch.Tensor | None
    failures: dict[int, Exception] = field(default_factory=dict)


class ImageBatcher:
    """Assemble payloads on one device: stack, upload, decode, preprocess."""

    def __init__(
        self,
        device: torch.device,
        preprocess: TensorPreprocess | None = None,
        decoder: JpegBatchDecoder | None = None,
        fallback: Fallback | None = None,
        chunk_pixels: int = CHUNK_PIXELS,
    ) -> None:
        self._device = device
        self._pinned = device.type == "cuda"
        self._preprocess = preprocess
        self._decoder = decoder
        self._fallback = fallback
        self._chunk_pixels = chunk_pixels

    def assemble(self, payloads: Sequence[ImagePayload]) -> Assembled:
        failures: dict[int, Exception] = {}
        parts: list[tuple[list[int], torch.Tensor]] = []
        floats = [(i, p) for i, p in enumerate(payloads) if isinstance(p, torch.Tensor)]
        if floats:
            parts.append(([i for i, _ in floats], self._upload_floats([p for _, p in floats])))
        others = [i for i, p in enumerate(payloads) if isinstance(p, (DecodedImage, EncodedImage))]
        if len(floats) + len(others) != len(payloads):
            raise TypeError("an image payload is a float32 tensor, a DecodedImage or an EncodedImage")
        for chunk in _chunks(others, [_pixels(payloads[i]) for i in others], self._chunk_pixels):
            indices, images = self._uint8_images(payloads, chunk, failures)
            if indices:
                if self._preprocess is None:
                    raise RuntimeError("uint8 images reached a model that has no tensor preprocessing")
                parts.append((indices, self._preprocess(images)))
        return Assembled(self._in_order(parts), failures)

    def _uint8_images(
        self, payloads: Sequence[ImagePayload], chunk: list[int], failures: dict[int, Exception]
    ) -> tuple[list[int], list[torch.Tensor]]:
        """Return the chunk's images as uint8 3 × h × w tensors on the device, by payload index."""
        images: dict[int, torch.Tensor] = {}
        arrays: list[tuple[int, np.ndarray]] = []
        encoded = [(i, p) for i in chunk if isinstance(p := payloads[i], EncodedImage)]
        if encoded:
            if self._decoder is None:
                raise RuntimeError("a JPEG reached a model that does not decode JPEGs")
            for (index, image), tensor in zip(encoded, self._decoder.decode([p for _, p in encoded]), strict=True):
                if tensor is not None:
                    images[index] = tensor
                    continue
                try:
                    arrays.append((index, self._decode_alone(image.encoded())))
                except ServiceError as exc:
                    failures[index] = exc
        arrays += [(i, p.pixels) for i in chunk if isinstance(p := payloads[i], DecodedImage)]
        for (index, _), tensor in zip(arrays, self._upload_uint8([a for _, a in arrays]), strict=True):
            images[index] = tensor
        order = sorted(images)
        return order, [images[i] for i in order]

    def _decode_alone(self, data: bytes) -> np.ndarray:
        if self._fallback is None:
            raise RuntimeError("no decoder for a JPEG the batched decoder refused")
        return self._fallback(data)

    def _upload_floats(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if not self._pinned:
            return torch.stack(tensors)
        # A fresh pinned block each time: torch's host allocator keeps it from reuse until its copy is done.
        staged = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype, pin_memory=True)
        return torch.stack(tensors, out=staged).to(self._device, non_blocking=True)

    def _upload_uint8(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """Copy H × W × 3 arrays into one buffer, move it to the device in one copy, return 3 × H × W views."""
        if not arrays:
            return []
        arena = torch.empty(sum(a.size for a in arrays), dtype=torch.uint8, pin_memory=self._pinned)
        host = arena.numpy()
        spans = []
        offset = 0
        for array in arrays:
            host[offset : offset + array.size] = array.reshape(-1)
            spans.append((offset, array.shape))
            offset += array.size
        stored = arena.to(self._device, non_blocking=True) if self._pinned else arena
        return [stored[o : o + h * w * 3].view(h, w, 3).permute(2, 0, 1) for o, (h, w, _) in spans]

    def _in_order(self, parts: list[tuple[list[int], torch.Tensor]]) -> torch.Tensor | None:
        """Put the rows of every part in payload order."""
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0][1]  # each part's rows are in payload order already
        position = {index: k for k, index in enumerate(sorted(i for indices, _ in parts for i in indices))}
        first = parts[0][1]
        out = torch.empty((len(position), *first.shape[1:]), dtype=first.dtype, device=first.device)
        for indices, rows in parts:
            out[torch.tensor([position[i] for i in indices], device=first.device)] = rows.to(first.dtype)
        return out


def _pixels(payload: ImagePayload) -> int:
    if isinstance(payload, EncodedImage):
        return payload.header.pixels
    if isinstance(payload, DecodedImage):
        return int(payload.pixels.shape[0] * payload.pixels.shape[1])
    return 0


def _chunks(indices: list[int], sizes: list[int], budget: int) -> Iterator[list[int]]:
    """Split indices, in order, into runs whose sizes add up to at most budget (an oversized one alone)."""
    chunk: list[int] = []
    total = 0
    for index, size in zip(indices, sizes, strict=True):
        if chunk and total + size > budget:
            yield chunk
            chunk, total = [], 0
        chunk.append(index)
        total += size
    if chunk:
        yield chunk
