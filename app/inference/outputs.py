"""What a caller gets for a vector: its type (`embedding_type`) and length (`dimensions`), the one mapping docs/api.md defines.

Every vector the model gives is unit length (L2), so each component lies in [-1, 1] and one fixed
scale serves every vector, with no state on the server and none to send: `int8` is round(127·v),
`uint8` that plus 128, `binary` the sign bits (1 where v > 0) packed eight to a byte, first
component in the high bit, as `ubinary` (0-255) or as `binary` (the same byte − 128, -128..127).
Truncation (`dimensions`, matryoshka models only) happens first and is renormalised to unit length.
clip_client.vectors undoes each of them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from app.errors import InvalidRequest

EmbeddingType = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
EMBEDDING_TYPES: tuple[str, ...] = get_args(EmbeddingType)
INT8_SCALE = 127.0
# How each type goes out as bytes (base64): little-endian where a value has more than one byte.
_WIRE = {"float32": "<f4", "float16": "<f2", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """The type and length a request asked for; the defaults give today's float32 vector, whole."""

    embedding_type: EmbeddingType = "float32"
    dimensions: int | None = None

    @property
    def plain(self) -> bool:
        """Say whether the vector goes out as the model gives it (float32, every dimension)."""
        return self.embedding_type == "float32" and self.dimensions is None

    def check(self, model: str, dim: int, matryoshka_dims: tuple[int, ...]) -> None:
        """Raise InvalidRequest when the model cannot give `dimensions` (only matryoshka-trained ones truncate)."""
        wanted = self.dimensions
        if wanted is None or wanted == dim:
            return
        if wanted in matryoshka_dims and wanted < dim:
            return
        if not matryoshka_dims:
            raise InvalidRequest(
                f"dimensions={wanted} is not offered: {model} gives {dim} (it is not trained to be truncated; "
                "a matryoshka model lists matryoshka_dims in MODELS)"
            )
        offered = ", ".join(str(d) for d in matryoshka_dims if d < dim)
        raise InvalidRequest(f"dimensions={wanted} is not offered: {model} gives {dim}, or {offered} (matryoshka)")

    def apply(self, vector: np.ndarray) -> np.ndarray:
        """Return the vector as asked: truncated and renormalised, then in its type."""
        v = np.asarray(vector, dtype=np.float32)
        if self.dimensions is not None and self.dimensions < v.shape[-1]:
            v = v[: self.dimensions]
            v = v / max(float(np.linalg.norm(v)), 1e-12)
        return encode(v, self.embedding_type)


# The default: the model's float32 vector, whole.
AS_IS = OutputSpec()


def encode(vector: np.ndarray, embedding_type: str) -> np.ndarray:
    """Map a unit float32 vector to `embedding_type` (module docstring)."""
    if embedding_type == "float32":
        return vector
    if embedding_type == "float16":
        return vector.astype(np.float16)
    if embedding_type in ("int8", "uint8"):
        codes = np.clip(np.rint(vector * INT8_SCALE), -INT8_SCALE, INT8_SCALE).astype(np.int16)
        return (codes + 128).astype(np.uint8) if embedding_type == "uint8" else codes.astype(np.int8)
    if embedding_type in ("binary", "ubinary"):
        packed = np.packbits(vector > 0)
        return (packed.astype(np.int16) - 128).astype(np.int8) if embedding_type == "binary" else packed
    raise ValueError(f"unknown embedding type {embedding_type!r}")


def to_base64(encoded: np.ndarray, embedding_type: str) -> str:
    """Return the bytes of an encoded vector as base64 (float32 as OpenAI sends it: little-endian)."""
    return base64.b64encode(np.ascontiguousarray(encoded, dtype=_WIRE[embedding_type]).tobytes()).decode("ascii")
