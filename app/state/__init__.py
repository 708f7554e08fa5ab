"""Shared state in Redis (STATE_URL): nonces, the embedding cache's second level, rate limits per signing key."""

from __future__ import annotations

from app.state.cache import RedisEmbeddingCache
from app.state.errors import StoreUnavailable
from app.state.gate import RedisGate, Verdict
from app.state.keys import signing_key_id
from app.state.shared import SharedState

__all__ = [
    "RedisEmbeddingCache",
    "RedisGate",
    "SharedState",
    "StoreUnavailable",
    "Verdict",
    "signing_key_id",
]
