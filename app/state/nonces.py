"""A nonce store shared by every process that points at the same Redis."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets

from redis.asyncio import Redis

from app.state.errors import STORE_ERRORS, StoreUnavailable
from app.state.failures import FailureLog
from app.state.keys import DEFAULT_PREFIX, nonce_key

log = logging.getLogger("app.state.nonces")


# SET NX with a token per call, in one script so that it stays atomic: a retry of the same call (after its
# connection broke between the write and the answer) finds its own token and is not taken for a replay.
# KEYS[1]: the nonce's key. ARGV: the call's token, the TTL in milliseconds. Returns 1 when new, 0 when seen.
REMEMBER_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 1
end
return 0
"""


class RedisNonceStore:
    """Remember nonces in Redis with one atomic SET NX PX: a nonce seen anywhere is refused everywhere.

    Fails closed: when the store does not answer within `timeout_s`, `remember` raises StoreUnavailable.
    """

    def __init__(self, client: Redis, *, timeout_s: float, prefix: str = DEFAULT_PREFIX) -> None:
        self._script = client.register_script(REMEMBER_SCRIPT)
        self._timeout_s = timeout_s
        self._prefix = prefix
        self.failures = FailureLog(log, "nonce check")

    async def remember(self, nonce: str, ttl_s: float) -> bool:
        """Store `nonce` for `ttl_s`; return False when it was already there."""
        # Milliseconds, at least one: PX refuses 0, and rounding down could end a nonce's life early.
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        try:
            async with asyncio.timeout(self._timeout_s):
                created = await self._script(keys=[nonce_key(self._prefix, nonce)], args=[secrets.token_hex(8), ttl_ms])
        except STORE_ERRORS as exc:
            self.failures.note(exc)
            raise StoreUnavailable("the nonce store is unreachable; retry shortly") from exc
        return bool(created)
