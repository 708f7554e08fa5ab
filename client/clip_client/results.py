"""What `embed_images` returns: one result per input URL, in input order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one image failed: the server's error code and message."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ImageResult:
    """A success (`embedding` set) or a failure (`error` set) for one URL."""

    url: str
    embedding: list[float] | None = None
    error: ItemError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, object]:
        error = None if self.error is None else {"code": self.error.code, "message": self.error.message}
        return {"url": self.url, "embedding": self.embedding, "error": error}
