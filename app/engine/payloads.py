"""Payloads ↔ arena regions: how a worker lays an item's bytes out, and how an engine reads them back without a copy.

Both directions live here so that they cannot drift apart. A float32 tensor (open_clip's transform) and
token ids go as a tensor of a known dtype and shape; decoded pixels (DecodedImage) as height × width × 3
bytes; a JPEG for the engine to decode (EncodedImage) as its bytes plus its header facts. On the engine's
side a tensor or pixel payload is a view of the mapped arena (numpy, then torch.from_numpy): the batch is
assembled straight from the shared pages.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from app.engine.wire import Form, Item, ProtocolError
from app.inference.payload import DecodedImage, EncodedImage, ImageHeader, ImagePayload

# The tensor dtypes a payload may have: open_clip's float32 pixels, token ids (int64), and what test models use.
DTYPES = frozenset({"float32", "float16", "bfloat16", "int64", "int32"})

Payload = ImagePayload | torch.Tensor


def layout(payload: Payload) -> tuple[Form, tuple[int | str, ...], np.ndarray | bytes]:
    """Return how `payload` goes into the arena: its form, its meta and its bytes (an array or bytes)."""
    if isinstance(payload, EncodedImage):
        header = payload.header
        return Form.JPEG, (header.width, header.height, header.orientation), payload.encoded()
    if isinstance(payload, DecodedImage):
        pixels = np.ascontiguousarray(payload.pixels, dtype=np.uint8)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise TypeError(f"decoded pixels are height × width × 3, not {pixels.shape}")
        return Form.RGB, (pixels.shape[0], pixels.shape[1]), pixels
    if isinstance(payload, torch.Tensor):
        tensor = payload.detach().cpu().contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise TypeError(f"a payload tensor of dtype {dtype} cannot go to the engine process")
        array = tensor.view(torch.int16).numpy() if dtype == "bfloat16" else tensor.numpy()
        return Form.TENSOR, (dtype, *tensor.shape), array
    raise TypeError(f"not a payload: {type(payload).__name__}")


def nbytes(data: np.ndarray | bytes) -> int:
    """Return how many bytes `data` takes in the arena."""
    return len(data) if isinstance(data, bytes) else int(data.nbytes)


def read(item: Item, arena: np.ndarray) -> Payload:
    """Return the payload of `item`, viewing its region of the mapped `arena` (uint8); ProtocolError if it cannot be one."""
    if item.offset < 0 or item.length < 0 or item.offset + item.length > arena.size:
        raise ProtocolError(f"item {item.id}: region {item.offset}+{item.length} outside the arena of {arena.size}")
    region = arena[item.offset : item.offset + item.length]
    try:
        if item.form is Form.JPEG:
            width, height, orientation = (int(v) for v in item.meta)
            return EncodedImage(region, ImageHeader(width, height, orientation))  # a view: the decoder reads it there
        if item.form is Form.RGB:
            height, width = (int(v) for v in item.meta)
            return DecodedImage(region.reshape(height, width, 3))
        dtype, *shape = item.meta
        if dtype not in DTYPES or math.prod(int(s) for s in shape) * _itemsize(str(dtype)) != item.length:
            raise ValueError(f"dtype {dtype} and shape {shape} do not fill {item.length} bytes")
        sizes = [int(s) for s in shape]
        if dtype == "bfloat16":
            return torch.from_numpy(region.view(np.int16).reshape(sizes)).view(torch.bfloat16)
        return torch.from_numpy(region.view(np.dtype(str(dtype))).reshape(sizes))
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"item {item.id}: {exc}") from None


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
