"""Names of the keys in the shared store; none of them holds or reveals a secret."""

from __future__ import annotations

import hashlib

DEFAULT_PREFIX = "clip"


def signing_key_id(secret: str) -> str:
    """Return the public id of a signing secret: the first 12 hex digits of SHA-256("ratelimit:" + secret)."""
    return hashlib.sha256(("ratelimit:" + secret).encode("utf-8")).hexdigest()[:12]


def model_tag(model_id: str) -> str:
    """Return a short tag of the model the vectors come from, so two models never share cache entries."""
    return hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:16]


def nonce_key(prefix: str, nonce: str) -> str:
    """Return the key that marks `nonce` as seen."""
    return f"{prefix}:nonce:{nonce}"


def cache_key(prefix: str, tag: str, key: str) -> str:
    """Return the key of a cached vector; `key` is the in-process cache's key (`image:<sha256>`, `text:<sha256>`)."""
    return f"{prefix}:emb:{tag}:{key}"


def ratelimit_key(prefix: str, key_id: str) -> str:
    """Return the key of a signing key's rate-limit state."""
    return f"{prefix}:rl:{key_id}"
