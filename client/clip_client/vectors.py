"""Turn an answer's `embedding` back into numbers: whatever its `embedding_type`, as JSON numbers or base64.

The service's mapping (docs/api.md#output-types), undone:

- `float32`, `float16`: the values themselves;
- `int8`: q / 127; `uint8`: (u - 128) / 127 (each within 0.004 of the unit vector's component);
- `binary`, `ubinary`: the sign bits, as +1/√d or -1/√d, a unit vector (`bits` gives the bits themselves,
  for Hamming distances).

    from clip_client.vectors import unpack
    vector = unpack(answer["embedding"], "int8")               # float32 numpy array
    vector = unpack(item.embedding, "binary", dim=768)          # from /v1/embeddings' base64 too
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

from clip_client.signing import EMBEDDING_TYPES

INT8_SCALE = 127.0
# The bytes of each type in base64 (encoding_format=base64 on /v1/embeddings).
_WIRE = {"float32": "<f4", "float16": "<f2", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}


def raw(embedding: Sequence[float] | str, embedding_type: str = "float32") -> np.ndarray:
    """Return the embedding's values in its own type (base64 decoded), e.g. int8 codes as an int8 array."""
    wire = _WIRE.get(embedding_type)
    if wire is None:
        raise ValueError(f"embedding_type {embedding_type!r} is not one of {', '.join(EMBEDDING_TYPES)}")
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype=wire).astype(wire[-2:], copy=False)
    return np.asarray(embedding, dtype=np.float64).astype(wire)


def bits(embedding: Sequence[float] | str, embedding_type: str, dim: int | None = None) -> np.ndarray:
    """Return a binary or ubinary embedding's sign bits (uint8 0/1, one per dimension; `dim` drops the padding)."""
    if embedding_type not in ("binary", "ubinary"):
        raise ValueError(f"bits() reads binary or ubinary embeddings, not {embedding_type}")
    codes = raw(embedding, embedding_type).astype(np.int16)
    packed = (codes + 128 if embedding_type == "binary" else codes).astype(np.uint8)
    unpacked = np.unpackbits(packed)
    return unpacked[:dim] if dim is not None else unpacked


def unpack(embedding: Sequence[float] | str, embedding_type: str = "float32", dim: int | None = None) -> np.ndarray:
    """Return the float32 vector an embedding of `embedding_type` stands for (module docstring)."""
    values = raw(embedding, embedding_type)
    if embedding_type in ("float32", "float16"):
        return values.astype(np.float32)
    if embedding_type == "int8":
        return (values.astype(np.float32) / INT8_SCALE).astype(np.float32)
    if embedding_type == "uint8":
        return ((values.astype(np.float32) - 128.0) / INT8_SCALE).astype(np.float32)
    signs = bits(embedding, embedding_type, dim).astype(np.float32) * 2.0 - 1.0
    return (signs / np.sqrt(len(signs))).astype(np.float32)
