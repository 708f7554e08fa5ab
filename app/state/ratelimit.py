"""A rate limit per signing key, counted in items and shared by every process that points at the same Redis."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import InvalidRequest, RateLimited
from app.state.errors import STORE_ERRORS, StoreUnavailable
from app.state.failures import FailureLog
from app.state.keys import DEFAULT_PREFIX, ratelimit_key

log = logging.getLogger("app.state.ratelimit")

# GCRA (the token bucket expressed as one timestamp), atomic because Redis runs a script alone.
# KEYS[1]: the key's state, its theoretical arrival time (TAT) in microseconds of the server's clock.
# ARGV: rate (items/s), burst (items), cost (items of this request).
# The server's TIME, not the caller's clock, so that processes on hosts with skewed clocks agree.
# Returns {allowed (1/0), retry_after (microseconds, 0 when allowed), remaining (items left in the burst)}.
GCRA_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = 1000000 / rate
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, math.ceil(allow_at - now), math.floor((now + burst * interval - tat) / interval)}
end
-- At least 1 ms: at a very high rate one item's interval rounds away, and PX refuses 0.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return {1, 0, math.floor((now + burst * interval - new_tat) / interval)}
"""


@dataclass(frozen=True, slots=True)
class RateDecision:
    """What the limiter decided for one request."""

    allowed: bool
    retry_after_s: float
    remaining: int


class RedisRateLimiter:
    """`rate` items per second per signing key, with bursts of up to `burst` items.

    Keys are signing-key ids (`keys.signing_key_id`), never secrets. Fails closed: when the store does not
    answer within `timeout_s`, `take` and `acquire` raise StoreUnavailable.
    """

    def __init__(
        self, client: Redis, *, rate: float, burst: int, timeout_s: float, prefix: str = DEFAULT_PREFIX
    ) -> None:
        if rate <= 0:
            raise ValueError(f"the rate limit must be above 0 items/s, not {rate}")
        if burst < 1:
            raise ValueError(f"the rate-limit burst must be at least 1 item, not {burst}")
        self.rate = rate
        self.burst = burst
        self._timeout_s = timeout_s
        self._prefix = prefix
        self._script = client.register_script(GCRA_SCRIPT)
        self.failures = FailureLog(log, "rate limit")

    async def take(self, key_id: str, items: int) -> RateDecision:
        """Spend `items` of the key's budget if it has them; say whether it did and, if not, when to retry."""
        if items < 1:
            raise ValueError(f"a request costs at least 1 item, not {items}")
        if items > self.burst:
            # It could never pass; a 429 would have the client retry forever.
            raise InvalidRequest(f"a request of {items} items is over the rate-limit burst of {self.burst} items")
        try:
            async with asyncio.timeout(self._timeout_s):
                allowed, retry_after_us, remaining = await self._script(
                    keys=[ratelimit_key(self._prefix, key_id)], args=[repr(self.rate), self.burst, items]
                )
        except STORE_ERRORS as exc:
            self.failures.note(exc)
            raise StoreUnavailable("the rate-limit store is unreachable; retry shortly") from exc
        return RateDecision(allowed=bool(allowed), retry_after_s=int(retry_after_us) / 1e6, remaining=int(remaining))

    async def acquire(self, key_id: str, items: int) -> RateDecision:
        """Spend `items` of the key's budget, or raise RateLimited saying when to retry."""
        decision = await self.take(key_id, items)
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {self.rate:g} items/s (burst {self.burst}) reached; "
                f"retry in {decision.retry_after_s:.3f}s",
                decision.retry_after_s,
            )
        return decision
