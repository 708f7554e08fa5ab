"""API keys (`API_KEYS`): `Authorization: Bearer <key>`, accepted on `/v1/embeddings` only.

OpenAI's SDKs cannot sign a body, so that endpoint also takes a static key. A key is compared with
every configured key in constant time, and is named in rate limits and logs only by its id
(`app.state.keys.signing_key_id`), never by itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from app.state.keys import signing_key_id

BEARER = "bearer"


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None when there is none."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != BEARER:
        return None
    return token.strip()


class ApiKeys:
    """The accepted API keys (key rotation: every one listed is accepted)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [k.encode("utf-8") for k in keys]
        self._ids = [signing_key_id(k) for k in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def match(self, presented: str) -> str | None:
        """Return the id of the key `presented` is, or None; every key is compared, so the time says nothing."""
        candidate = presented.encode("utf-8", errors="replace")
        matches = [hmac.compare_digest(candidate, key) for key in self._keys]
        return self._ids[matches.index(True)] if any(matches) else None
