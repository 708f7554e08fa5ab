"""The door of every signed request, shared by every process that points at the same Redis.

One script, one round trip: refuse a nonce seen anywhere (replay), then spend the signing key's rate
limit, then remember the nonce. A replay spends nothing, and a request refused for its rate does not
use up its nonce.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import InvalidRequest, RateLimited
from app.state.errors import STORE_ERRORS, StoreUnavailable
from app.state.failures import FailureLog
from app.state.keys import DEFAULT_PREFIX, nonce_key, ratelimit_key

log = logging.getLogger("app.state.gate")

# Atomic because Redis runs a script alone. KEYS: the nonce's key when ARGV[1] is '1', then the signing
# key's rate state when ARGV[4] is '1'. ARGV: [1] nonce?, [2] this call's token, [3] nonce TTL (ms),
# [4] rate?, [5] rate (items/s), [6] burst (items), [7] cost (items).
# The nonce holds the token of the call that stored it: a retry of that call (its connection broke
# between the write and the answer) finds its own token and is admitted again, not taken for a replay.
# The rate limit is GCRA (a token bucket kept as one timestamp, the theoretical arrival time, in µs of
# the server's clock, so that processes on hosts with skewed clocks agree).
# Returns {verdict (1 admitted, 0 replay, -1 over the rate), retry after (µs), items left in the burst}.
GATE_SCRIPT = """
local k = 1
local nonce_key = nil
if ARGV[1] == '1' then
  nonce_key = KEYS[k]
  k = k + 1
  local held = redis.call('GET', nonce_key)
  if held then
    if held == ARGV[2] then
      return {1, 0, -1}
    end
    return {0, 0, 0}
  end
end
local remaining = -1
if ARGV[4] == '1' then
  local rate = tonumber(ARGV[5])
  local burst = tonumber(ARGV[6])
  local cost = tonumber(ARGV[7])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local interval = 1000000 / rate
  local tat = tonumber(redis.call('GET', KEYS[k]) or now)
  if tat < now then
    tat = now
  end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    return {-1, math.ceil(allow_at - now), math.floor((now + burst * interval - tat) / interval)}
  end
  -- At least 1 ms: at a very high rate one item's interval rounds away, and PX refuses 0.
  redis.call('SET', KEYS[k], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
  remaining = math.floor((now + burst * interval - new_tat) / interval)
end
if nonce_key then
  redis.call('SET', nonce_key, ARGV[2], 'PX', ARGV[3])
end
return {1, 0, remaining}
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the gate decided for one request; `remaining` is -1 when no rate limit applies."""

    admitted: bool
    replay: bool = False
    retry_after_s: float = 0.0
    remaining: int = -1


class RedisGate:
    """Nonces seen by any process, and `rate` items per second per signing key with bursts of `burst` items.

    Keys are signing-key ids (`keys.signing_key_id`), never secrets. Without a rate, only nonces are checked.
    Fails closed: when the store does not answer within `timeout_s`, every call raises StoreUnavailable.
    """

    def __init__(
        self,
        client: Redis,
        *,
        rate: float | None,
        burst: int | None,
        timeout_s: float,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.rate = rate
        self.burst = 0
        if rate is not None:
            if rate <= 0:
                raise ValueError(f"the rate limit must be above 0 items/s, not {rate}")
            # One second of the rate unless told otherwise.
            self.burst = burst if burst is not None else max(1, round(rate))
            if self.burst < 1:
                raise ValueError(f"the rate-limit burst must be at least 1 item, not {self.burst}")
        self._timeout_s = timeout_s
        self._prefix = prefix
        self._script = client.register_script(GATE_SCRIPT)
        self.failures = FailureLog(log, "nonce and rate-limit check")

    async def check(self, nonce: str | None, nonce_ttl_s: float, key_id: str, items: int) -> Verdict:
        """Refuse a replayed nonce, else spend `items` of the key's budget if it has them, and say which."""
        rated = self.rate is not None and items > 0
        if nonce is None and not rated:
            return Verdict(admitted=True)
        if rated and items > self.burst:
            # It could never pass; a 429 would have the client retry forever.
            raise InvalidRequest(f"a request of {items} items is over the rate-limit burst of {self.burst} items")
        keys = [] if nonce is None else [nonce_key(self._prefix, nonce)]
        if rated:
            keys.append(ratelimit_key(self._prefix, key_id))
        # Milliseconds, at least one: PX refuses 0, and rounding down could end a nonce's life early.
        ttl_ms = max(1, math.ceil(nonce_ttl_s * 1000))
        args = ["1" if nonce is not None else "0", secrets.token_hex(8), ttl_ms]
        args += ["1", repr(self.rate), self.burst, items] if rated else ["0", 0, 0, 0]
        try:
            async with asyncio.timeout(self._timeout_s):
                verdict, retry_after_us, remaining = await self._script(keys=keys, args=args)
        except STORE_ERRORS as exc:
            self.failures.note(exc)
            raise StoreUnavailable("the nonce and rate-limit store is unreachable; retry shortly") from exc
        return Verdict(
            admitted=verdict == 1,
            replay=verdict == 0,
            retry_after_s=int(retry_after_us) / 1e6,
            remaining=int(remaining),
        )

    async def admit(self, nonce: str | None, nonce_ttl_s: float, key_id: str, items: int) -> bool:
        """Return False for a replayed nonce; raise RateLimited, saying when to retry, when the budget is spent."""
        verdict = await self.check(nonce, nonce_ttl_s, key_id, items)
        if not verdict.admitted and not verdict.replay:
            raise RateLimited(
                f"rate limit of {self.rate:g} items/s (burst {self.burst}) reached; "
                f"retry in {verdict.retry_after_s:.3f}s",
                verdict.retry_after_s,
            )
        return verdict.admitted
