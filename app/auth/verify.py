"""Verify HMAC-signed requests, the service's scheme and the legacy job's (both defined in `clip_client.signing`),
and the API keys (`app.auth.apikeys`) that `/v1/embeddings` also takes.

Each refusal is a 401 whose code says which check failed (`app.errors`: MissingAuthHeaders,
MalformedAuthHeaders, TimestampOutOfWindow, SignatureMismatch, NonceReused, ApiKeyInvalid); what
the caller and the log are told is `app.auth.refusals`'s. The legacy job keeps its one message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clip_client.signing import canonical_parts, legacy_message, signature_matches

from app.auth.apikeys import ApiKeys
from app.auth.nonces import Gate, MemoryNonceStore, nonce_ttl_s
from app.auth.refusals import Attempt, log, mismatch_message, missing_message, skew_message
from app.errors import (
    ApiKeyInvalid,
    MalformedAuthHeaders,
    MissingAuthHeaders,
    NonceReused,
    SignatureMismatch,
    TimestampOutOfWindow,
)
from app.settings import Settings
from app.state.keys import signing_key_id

# fullmatch, not `$`: `$` also matches before a trailing newline.
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
# HMAC-SHA256 as hex; checked before comparing, as compare_digest raises TypeError on non-ASCII text.
_SIGNATURE_RE = re.compile(r"\s*[0-9A-Fa-f]{64}\s*")
_NO_KEY_SIGNS = "no EMBEDDING_HMAC_SECRET key signs this request"
_SIGNED_ONLY = (
    "this endpoint takes signed requests only (X-Timestamp, X-Signature); an API key (Authorization: Bearer) "
    "is accepted on /v1/embeddings only"
)
_UNKNOWN_API_KEY = "the API key (Authorization: Bearer) is not one of this service's API_KEYS"
_NONCE_REUSED = "X-Nonce was already used by an accepted request: send a new nonce with every request, retries too"
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
class Verified:
    """A request whose signature checked out, not yet admitted: its nonce and the id of the key that signed it."""

    key_id: str
    nonce: str | None
    request_id: str | None = None


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

    def precheck(self, headers: AuthHeaders, *, api_key_accepted: bool = False) -> None:
        """Refuse missing, malformed or stale headers: every check that needs no body, run before it is read.

        `api_key_accepted`: the endpoint also takes an API key, which a refusal for missing headers mentions.
        """
        if not self.insecure:
            self._checked_headers(headers, Attempt(headers.request_id), api_key_accepted)

    def check_api_key(self, token: str, request_id: str | None) -> Verified:
        """Raise ApiKeyInvalid unless `token` is one of API_KEYS (`/v1/embeddings` only); return its id, to `admit`."""
        if self.insecure:
            return Verified(UNSIGNED, None, request_id)
        key_id = self._api_keys.match(token)
        if key_id is None:
            reason = "unknown API key" if self._api_keys else "an API key was sent, but API_KEYS is not set"
            Attempt(request_id).refuse(ApiKeyInvalid, _UNKNOWN_API_KEY, f"Authorization: Bearer: {reason}")
        return Verified(key_id, None, request_id)

    def refuse_api_key(self, request_id: str | None) -> None:
        """Refuse a bearer key sent without a signature to an endpoint that takes signed requests only."""
        if not self.insecure:
            reason = "Authorization: Bearer is accepted on /v1/embeddings only; this endpoint is signed"
            Attempt(request_id).refuse(MissingAuthHeaders, _SIGNED_ONLY, reason)

    def check(self, method: str, path: str, payload_id: str, headers: AuthHeaders) -> Verified:
        """Raise Unauthorized unless the headers sign this request; return who signed it, to `admit` next.

        The key id is `UNSIGNED` when ALLOW_INSECURE_AUTH=1.
        """
        if self.insecure:
            return Verified(UNSIGNED, None, headers.request_id)
        attempt = Attempt(headers.request_id)
        ts, signature = self._checked_headers(headers, attempt)
        parts = canonical_parts(method, path, payload_id, ts, headers.nonce)
        key = self._signing_key(parts, signature)
        if key is None:
            reason = f"bad signature for {method} {path!r}: {_NO_KEY_SIGNS} (method, path, body, timestamp, nonce)"
            attempt.refuse(SignatureMismatch, mismatch_message(parts), reason)
        return Verified(self._key_ids[key], headers.nonce, headers.request_id)

    async def admit(self, verified: Verified, items: int) -> None:
        """Refuse a replayed nonce (NonceReused), spend `items` of the key's rate limit, remember the nonce."""
        if not await self._gate.admit(verified.nonce, nonce_ttl_s(self._max_skew_s), verified.key_id, items):
            reason = "reused X-Nonce: a request with this nonce was already accepted (a replay?)"
            Attempt(verified.request_id).refuse(NonceReused, _NONCE_REUSED, reason)

    def verify_legacy(
        self, image_url: str, timestamp: object, signature: object, request_id: str | None = None
    ) -> None:
        """Raise Unauthorized unless `signature` signs the legacy job `image_url|timestamp` (the scheme has no nonce).

        `timestamp` may be an int or a string of digits, as legacy clients send either. Every refusal
        has the one legacy message.
        """
        if self.insecure:
            return
        attempt = Attempt(request_id, legacy=True)
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int | str)):
            attempt.refuse(MalformedAuthHeaders, "malformed timestamp")
        if signature is not None and not isinstance(signature, str):
            attempt.refuse(MalformedAuthHeaders, "malformed signature (expected 64 hex characters)")
        headers = AuthHeaders(
            None if timestamp is None else str(timestamp), signature if isinstance(signature, str) else None, None
        )
        ts, checked = self._checked_headers(headers, attempt, names=("timestamp", "signature"))
        if self._signing_key((legacy_message(image_url, ts),), checked) is None:
            attempt.refuse(
                SignatureMismatch, f"bad signature for the legacy job: {_NO_KEY_SIGNS} (image_url, timestamp)"
            )

    def _signing_key(self, message: Sequence[str], signature: str) -> int | None:
        """Return the index of the secret that signs the message (given in consecutive parts), or None."""
        # Each part is encoded once for every key; a long payload id is never joined into a second copy.
        encoded = [part.encode("utf-8") for part in message]
        # Check every secret so the time taken does not say which one matched.
        matches = [signature_matches(key, encoded, signature) for key in self._secrets]
        return matches.index(True) if any(matches) else None

    def _checked_headers(
        self,
        headers: AuthHeaders,
        attempt: Attempt,
        api_key_accepted: bool = False,
        names: tuple[str, str] = ("X-Timestamp", "X-Signature"),
    ) -> tuple[str, str]:
        """Return the timestamp and the signature once present, well formed and in the window; else refuse.

        Checked in that order (missing, malformed, stale), so that the first fix named is the one to make first.
        """
        ts_name, sig_name = names
        raw_ts, signature, nonce = headers.timestamp, headers.signature, headers.nonce
        missing = [name for name, value in ((ts_name, raw_ts), (sig_name, signature)) if not value]
        if nonce is None and self._require_nonce and not attempt.legacy:
            missing.append("X-Nonce")
        if missing:
            reason = f"missing {', '.join(missing)}" + (" (REQUIRE_NONCE=1)" if "X-Nonce" in missing else "")
            attempt.refuse(MissingAuthHeaders, missing_message(missing, api_key_accepted), reason)
        assert raw_ts is not None and signature is not None  # for mypy: refused above
        if not _TIMESTAMP_RE.fullmatch(raw_ts):
            attempt.refuse(MalformedAuthHeaders, f"malformed {ts_name}: expected Unix seconds (1 to 12 digits)")
        if not _SIGNATURE_RE.fullmatch(signature):
            attempt.refuse(MalformedAuthHeaders, f"malformed {sig_name}: expected 64 hex characters")
        if nonce is not None and not _NONCE_RE.fullmatch(nonce):
            attempt.refuse(MalformedAuthHeaders, "malformed X-Nonce: expected 16-64 characters of A-Za-z0-9_-")
        client, server = int(raw_ts), int(self._clock())
        if abs(client - server) > self._max_skew_s:
            skew = client - server
            reason = (
                f"clock skew: {ts_name} {client} is {abs(skew)}s {'ahead of' if skew > 0 else 'behind'} the server's "
                f"clock {server} (AUTH_MAX_SKEW_S={self._max_skew_s})"
            )
            told = skew_message(ts_name, client, server, self._max_skew_s)
            attempt.refuse(TimestampOutOfWindow, told, reason, client_time=client, server_time=server, skew_s=skew)
        return raw_ts, signature


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
