"""Verify HMAC-signed requests, the service's scheme and the legacy job's (both defined in `clip_client.signing`),
and the API keys (`app.auth.apikeys`) that `/v1/embeddings` also takes.

Every refusal looks the same to the caller; its reason goes to the log only, as one warning
"auth refused: <reason>" carrying the request's id (`request_id`), never a secret or a signature.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

from clip_client.signing import canonical_message, legacy_message, signature_matches

from app.auth.apikeys import ApiKeys
from app.errors import Overloaded, Unauthorized
from app.settings import Settings
from app.state.keys import signing_key_id

log = logging.getLogger("app.auth.verify")

# fullmatch, not `$`: `$` also matches before a trailing newline.
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
# HMAC-SHA256 as hex; checked before comparing, as compare_digest raises TypeError on non-ASCII text.
_SIGNATURE_RE = re.compile(r"\s*[0-9A-Fa-f]{64}\s*")
# Every failure looks the same to the caller; the reason goes to the log only.
UNAUTHORIZED_MESSAGE = "missing or invalid request signature"
LEGACY_UNAUTHORIZED_MESSAGE = "missing or invalid signature"
# What an OpenAI client that sent a wrong key reads (it never signs): the same for every bearer refusal.
API_KEY_UNAUTHORIZED_MESSAGE = "missing or invalid API key or request signature"
_NO_KEY_SIGNS = "no EMBEDDING_HMAC_SECRET key signs this request"
# The key id of requests accepted unsigned (ALLOW_INSECURE_AUTH=1): they share one rate limit.
UNSIGNED = "unsigned"


@dataclass(frozen=True, slots=True)
class AuthHeaders:
    """The signature headers of one request, as sent, and the id its log lines carry (X-Request-ID)."""

    timestamp: str | None
    signature: str | None
    nonce: str | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Attempt:
    """Who is being checked: the id to log a refusal under, and the message the caller gets."""

    request_id: str | None
    message: str = UNAUTHORIZED_MESSAGE

    def refuse(self, reason: str, **fields: object) -> NoReturn:
        """Log why (with the request id and `fields`), then raise the caller's one Unauthorized."""
        extra = fields if self.request_id is None else {"request_id": self.request_id, **fields}
        log.warning("auth refused: %s", reason, extra=extra)
        raise Unauthorized(self.message)


class Gate(Protocol):
    """Remember nonces and spend rate limits, in this process or in a store every process shares (app.state.gate)."""

    async def admit(self, nonce: str | None, nonce_ttl_s: float, key_id: str, items: int) -> bool:
        """Return False for a nonce already seen; else spend `items` of `key_id`'s budget and remember the nonce.

        Raise RateLimited when the budget is spent.
        """
        ...


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out, not yet admitted: its nonce and the id of the key that signed it."""

    key_id: str
    nonce: str | None
    request_id: str | None = None


class MemoryNonceStore:
    """In-process nonce store, bounded: when full of live nonces it refuses new ones."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    async def remember(self, nonce: str, ttl_s: float) -> bool:
        """Store `nonce` for `ttl_s`; return False when it was already there."""
        now = self._clock()
        with self._lock:
            # Insertion order is expiry order because every entry has the same ttl.
            while self._seen and next(iter(self._seen.values())) <= now:
                self._seen.popitem(last=False)
            if nonce in self._seen:
                return False
            if len(self._seen) >= self._max:
                # Evicting a live nonce would re-open it to replay, so refuse instead.
                raise Overloaded("too many recent nonces; retry shortly")
            self._seen[nonce] = now + ttl_s
            return True

    async def admit(self, nonce: str | None, nonce_ttl_s: float, key_id: str, items: int) -> bool:
        """Remember `nonce` (a process has no rate limit of its own: that needs STATE_URL)."""
        return True if nonce is None else await self.remember(nonce, nonce_ttl_s)


class RequestVerifier:
    """Check a request's signature against one or more secrets (key rotation)."""

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        max_skew_s: int,
        insecure: bool,
        require_nonce: bool,
        gate: Gate,
        clock: Callable[[], float] = time.time,
        api_keys: Sequence[str] = (),
    ) -> None:
        self._secrets = [s.encode("utf-8") for s in secrets]
        self._api_keys = ApiKeys(api_keys)
        # What rate limits and logs may name a key by: never the secret itself.
        self._key_ids = [signing_key_id(s) for s in secrets]
        self._max_skew_s = max_skew_s
        self.insecure = insecure
        self._require_nonce = require_nonce
        self._gate = gate
        self._clock = clock

    def precheck(self, headers: AuthHeaders) -> None:
        """Refuse missing, malformed or stale headers without looking at the payload."""
        if self.insecure:
            return
        attempt = _Attempt(headers.request_id)
        self._check_timestamp(headers.timestamp, attempt)
        self._check_signature(headers.signature, attempt)

    def check_api_key(self, token: str, request_id: str | None) -> Verified:
        """Raise Unauthorized unless `token` is one of API_KEYS (`/v1/embeddings` only); return its id, to `admit`."""
        if self.insecure:
            return Verified(UNSIGNED, None, request_id)
        key_id = self._api_keys.match(token)
        if key_id is None:
            reason = "unknown API key" if self._api_keys else "an API key was sent, but API_KEYS is not set"
            _Attempt(request_id, API_KEY_UNAUTHORIZED_MESSAGE).refuse(f"Authorization: Bearer: {reason}")
        return Verified(key_id, None, request_id)

    def refuse_api_key(self, request_id: str | None) -> None:
        """Refuse a bearer key sent without a signature to an endpoint that takes signed requests only."""
        if not self.insecure:
            _Attempt(request_id).refuse(
                "Authorization: Bearer is accepted on /v1/embeddings only; this endpoint is signed"
            )

    def check(self, method: str, path: str, payload_id: str, headers: AuthHeaders) -> Verified:
        """Raise Unauthorized unless the headers sign this request; return who signed it, to `admit` next.

        The key id is `UNSIGNED` when ALLOW_INSECURE_AUTH=1.
        """
        if self.insecure:
            return Verified(UNSIGNED, None, headers.request_id)
        attempt = _Attempt(headers.request_id)
        ts = self._check_timestamp(headers.timestamp, attempt)
        signature = self._check_signature(headers.signature, attempt)
        nonce = headers.nonce
        if nonce is not None and not _NONCE_RE.fullmatch(nonce):
            attempt.refuse("malformed X-Nonce (expected 16-64 characters of A-Za-z0-9_-)")
        if nonce is None and self._require_nonce:
            attempt.refuse("missing X-Nonce (REQUIRE_NONCE=1)")
        key = self._signing_key(canonical_message(method, path, payload_id, ts, nonce), signature)
        if key is None:
            attempt.refuse(
                f"bad signature for {method} {path!r}: {_NO_KEY_SIGNS} (method, path, body, timestamp, nonce)"
            )
        return Verified(self._key_ids[key], nonce, headers.request_id)

    async def admit(self, verified: Verified, items: int) -> None:
        """Refuse a replayed nonce (Unauthorized), spend `items` of the key's rate limit, remember the nonce."""
        if not await self._gate.admit(verified.nonce, 2 * self._max_skew_s, verified.key_id, items):
            _Attempt(verified.request_id).refuse(
                "reused X-Nonce: a request with this nonce was already accepted (a replay?)"
            )

    def verify_legacy(
        self, image_url: str, timestamp: object, signature: object, request_id: str | None = None
    ) -> None:
        """Raise Unauthorized unless `signature` signs the legacy job `image_url|timestamp` (the scheme has no nonce).

        `timestamp` may be an int or a string of digits, as legacy clients send either.
        """
        if self.insecure:
            return
        attempt = _Attempt(request_id, LEGACY_UNAUTHORIZED_MESSAGE)
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int | str)):
            attempt.refuse("malformed timestamp")
        ts = self._check_timestamp(None if timestamp is None else str(timestamp), attempt, "timestamp")
        if signature is not None and not isinstance(signature, str):
            attempt.refuse("malformed signature (expected 64 hex characters)")
        checked = self._check_signature(signature if isinstance(signature, str) else None, attempt, "signature")
        if self._signing_key(legacy_message(image_url, ts), checked) is None:
            attempt.refuse(f"bad signature for the legacy job: {_NO_KEY_SIGNS} (image_url, timestamp)")

    def _signing_key(self, message: str, signature: str) -> int | None:
        """Return the index of the secret that signs `message`, or None."""
        # Check every secret so the time taken does not say which one matched.
        matches = [signature_matches(key, message, signature) for key in self._secrets]
        return matches.index(True) if any(matches) else None

    def _check_timestamp(self, raw: str | None, attempt: _Attempt, name: str = "X-Timestamp") -> str:
        if raw is None or raw == "":
            attempt.refuse(f"missing {name}")
        if not _TIMESTAMP_RE.fullmatch(raw):
            attempt.refuse(f"malformed {name} (expected Unix seconds)")
        client, server = int(raw), int(self._clock())
        skew = client - server
        if abs(skew) > self._max_skew_s:
            attempt.refuse(
                f"clock skew: {name} {client} is {abs(skew)}s {'ahead of' if skew > 0 else 'behind'} the server's "
                f"clock {server} (AUTH_MAX_SKEW_S={self._max_skew_s})",
                client_time=client,
                server_time=server,
                skew_s=skew,
            )
        return raw

    @staticmethod
    def _check_signature(raw: str | None, attempt: _Attempt, name: str = "X-Signature") -> str:
        if not raw:
            attempt.refuse(f"missing {name}")
        if not _SIGNATURE_RE.fullmatch(raw):
            attempt.refuse(f"malformed {name} (expected 64 hex characters)")
        return raw


def make_verifier(
    settings: Settings, gate: Gate | None = None, clock: Callable[[], float] = time.time
) -> RequestVerifier:
    """Build the verifier the auth settings describe: every EMBEDDING_HMAC_SECRET key and API key, the skew window, the gate.

    Without a shared `gate`, nonces are remembered in this process.
    """
    if settings.allow_insecure_auth:
        log.warning("ALLOW_INSECURE_AUTH=1: requests are NOT authenticated (development only)")
    return RequestVerifier(
        settings.hmac_keys,
        max_skew_s=settings.auth_max_skew_s,
        insecure=settings.allow_insecure_auth,
        require_nonce=settings.require_nonce,
        gate=gate if gate is not None else MemoryNonceStore(settings.nonce_cache_size),
        clock=clock,
        api_keys=settings.api_key_list,
    )
