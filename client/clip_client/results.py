"""What `embed_images` and `embed_texts` return: one result per input, in input order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one item failed: the server's error code and message."""

    code: str
    message: str


class _Outcome:
    """What both results share: `ok`, and the JSON form of `error`."""

    __slots__ = ()
    error: ItemError | None

    @property
    def ok(self) -> bool:
        return self.error is None

    def _error_dict(self) -> dict[str, str] | None:
        return None if self.error is None else {"code": self.error.code, "message": self.error.message}


@dataclass(frozen=True, slots=True)
class ImageResult(_Outcome):
    """A success (`embedding` set) or a failure (`error` set) for one URL."""

    url: str
    embedding: list[float] | None = None
    error: ItemError | None = None

    def to_dict(self) -> dict[str, object]:
        return {"url": self.url, "embedding": self.embedding, "error": self._error_dict()}


@dataclass(frozen=True, slots=True)
class TextResult(_Outcome):
    """A success (`embedding` set) or a failure (`error` set) for one text."""

    text: str
    embedding: list[float] | None = None
    error: ItemError | None = None

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "embedding": self.embedding, "error": self._error_dict()}
