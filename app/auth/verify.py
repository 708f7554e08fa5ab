"""Verify HMAC-signed requests (the scheme itself lives in `clip_client.signing`)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from clip_client.signing import canonical_message, signature_matches

from app.errors import Overloaded, Unauthorized

log = logging.getLogger("app.auth.verify")

# fullmatch, not `$`: `$` also matches before a trailing newline.
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
# HMAC-SHA256 as hex; checked before comparing, as compare_digest raises TypeError on non-ASCII text.
_SIGNATURE_RE = re.compile(r"\s*[0-9A-Fa-f]{64}\s*")
# Every failure looks the same to the caller; the reason goes to the log only.
UNAUTHORIZED_MESSAGE = "missing or invalid request signature"


@dataclass(frozen=True, slots=True)
class AuthHeaders:
    """The signature headers of one request, as sent."""

    timestamp: str | None
    signature: str | None
    nonce: str | None


class NonceStore(Protocol):
    """Remembers nonces; a shared implementation can replace the in-process one."""

    def remember(self, nonce: str, ttl_s: float) -> bool:
        """Store `nonce` for `ttl_s`; return False when it was already there."""
        ...


class MemoryNonceStore:
    """In-process nonce store, bounded: when full of live nonces it refuses new ones."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, nonce: str, ttl_s: float) -> bool:
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


class RequestVerifier:
    """Check a request's signature against one or more secrets (key rotation)."""

    def __init__(
        self,
        secrets: list[str],
        *,
        max_skew_s: int,
        insecure: bool,
        require_nonce: bool,
        nonces: NonceStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secrets = [s.encode("utf-8") for s in secrets]
        self._max_skew_s = max_skew_s
        self.insecure = insecure
        self._require_nonce = require_nonce
        self._nonces = nonces
        self._clock = clock

    def precheck(self, headers: AuthHeaders) -> None:
        """Refuse missing, malformed or stale headers without looking at the payload."""
        if self.insecure:
            return
        self._check_timestamp(headers.timestamp)
        self._check_signature(headers.signature)

    def verify(self, method: str, path: str, payload_id: str, headers: AuthHeaders) -> None:
        """Raise Unauthorized unless the headers sign this request; remember its nonce."""
        if self.insecure:
            return
        ts = self._check_timestamp(headers.timestamp)
        signature = self._check_signature(headers.signature)
        nonce = headers.nonce
        if nonce is not None and not _NONCE_RE.fullmatch(nonce):
            self._refuse("malformed X-Nonce")
        if nonce is None and self._require_nonce:
            self._refuse("missing X-Nonce (REQUIRE_NONCE=1)")
        message = canonical_message(method, path, payload_id, ts, nonce)
        # Check every secret so the time taken does not say which one matched.
        matches = [signature_matches(key, message, signature) for key in self._secrets]
        if not any(matches):
            self._refuse(f"bad signature for {method} {path!r}")
        if nonce is not None and not self._nonces.remember(nonce, 2 * self._max_skew_s):
            self._refuse("replayed nonce")

    def _check_timestamp(self, raw: str | None) -> str:
        if raw is None or raw == "":
            self._refuse("missing X-Timestamp")
        if not _TIMESTAMP_RE.fullmatch(raw):
            self._refuse("malformed X-Timestamp")
        skew = abs(int(self._clock()) - int(raw))
        if skew > self._max_skew_s:
            self._refuse(f"timestamp outside the window ({skew}s > {self._max_skew_s}s)")
        return raw

    def _check_signature(self, raw: str | None) -> str:
        if not raw:
            self._refuse("missing X-Signature")
        if not _SIGNATURE_RE.fullmatch(raw):
            self._refuse("malformed X-Signature (expected 64 hex characters)")
        return raw

    @staticmethod
    def _refuse(reason: str) -> NoReturn:
        log.warning("auth refused: %s", reason)
        raise Unauthorized(UNAUTHORIZED_MESSAGE)
