"""How an authentication refusal is told: the caller hears which check failed, the log hears the details.

The caller's message is built only from what the request itself carried (header names, its own
timestamp and nonce, the message it should have signed), the server's clock and the window: never a
secret, an expected signature or whether a key exists (docs/security.md, Authentication failures).
The log line "auth refused: <reason>" carries the request's id (`request_id`), never a secret or a signature.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn

from app.errors import Unauthorized

log = logging.getLogger("app.auth.verify")

# The legacy job's one message for every refusal (its callers match on it).
LEGACY_UNAUTHORIZED_MESSAGE = "missing or invalid signature"
HOW_TO_SIGN = "docs/api.md#authentication"
# Longest payload id quoted whole in a signature_mismatch message; a longer one (a data URI) is cut.
_QUOTED_PAYLOAD_CHARS = 256


@dataclass(frozen=True, slots=True)
class Attempt:
    """Who is being checked: the id a refusal is logged under; `legacy` keeps the legacy job's one message."""

    request_id: str | None
    legacy: bool = False

    def refuse(self, error: type[Unauthorized], told: str, reason: str | None = None, **fields: object) -> NoReturn:
        """Log `reason` (else `told`) with the request id and `fields`, then raise `error(told)`."""
        extra = fields if self.request_id is None else {"request_id": self.request_id, **fields}
        log.warning("auth refused: %s", reason or told, extra=extra)
        if self.legacy:
            raise Unauthorized(LEGACY_UNAUTHORIZED_MESSAGE)
        raise error(told)


def missing_message(names: list[str], api_key_accepted: bool) -> str:
    """Say which signature headers are missing, and what would do instead."""
    if names == ["X-Nonce"]:
        return "missing X-Nonce: this service requires a new nonce in every signed request (REQUIRE_NONCE=1)"
    told = f"missing {' and '.join(names)}: sign the request ({HOW_TO_SIGN})"
    return told + (", or send Authorization: Bearer <API key>" if api_key_accepted else "")


def skew_message(name: str, client: int, server: int, max_skew_s: int) -> str:
    """Say how far the request's timestamp is from the server's clock, and how far it may be."""
    skew = client - server
    side = "ahead of" if skew > 0 else "behind"
    return (
        f"{name} {client} is {abs(skew)} s {side} the server's clock ({server}); at most {max_skew_s} s either way "
        "is accepted (AUTH_MAX_SKEW_S): check this machine's clock"
    )


def mismatch_message(parts: tuple[str, str, str]) -> str:
    """Say what the signature should cover: the canonical message, its payload id cut when very long."""
    head, payload_id, tail = parts
    if len(payload_id) > _QUOTED_PAYLOAD_CHARS:
        payload_id = f"{payload_id[:_QUOTED_PAYLOAD_CHARS]}...({len(payload_id)} characters)"
    return (
        f"the signature does not match this request: no key of the service signs {head + payload_id + tail!r}; "
        f"check the secret, and sign the method, the path as sent, the payload id and the timestamp ({HOW_TO_SIGN})"
    )
