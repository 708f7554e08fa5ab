"""The HMAC request-signing scheme, shared by the service and every client.

Canonical message: ``METHOD|PATH|PAYLOAD_ID|TIMESTAMP`` (``|NONCE`` appended when a nonce is sent),
signed with HMAC-SHA256 and sent as lowercase hex in ``X-Signature``. PAYLOAD_ID per endpoint:

- ``/v1/embed/image``: the ``image_url`` exactly as sent;
- ``/v1/embed/image-batch``: SHA-256 hex of the ``image_urls`` joined with ``\\n``;
- ``/v1/embed/text``: SHA-256 hex of the UTF-8 text;
- ``/v1/embed/text-batch``: the digest list of the texts' UTF-8 bytes (below);
- ``/v1/embed/image-upload``: the digest list of the image parts' bytes, in the order sent;
- ``/v1/embeddings``: SHA-256 hex of the raw request body.

The digest list of items is the SHA-256 hex of the items' own SHA-256 hex digests joined with ``\\n``:
unambiguous whatever the items hold (newlines included), as every digest has the same length.

A request that sends any of the options ``model``, ``embedding_type``, ``dimensions`` (in the JSON body,
or as query parameters of the upload) signs :func:`options_payload_id` of the endpoint's id instead: the
digest list of the id and of ``name=value`` for each option sent, in that order. A request that sends
none signs the endpoint's id as before, so existing clients' signatures stay valid.

The legacy serverless handler signs ``image_url|timestamp`` instead (:func:`legacy_message`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence

IMAGE_PATH = "/v1/embed/image"
BATCH_PATH = "/v1/embed/image-batch"
TEXT_PATH = "/v1/embed/text"
TEXT_BATCH_PATH = "/v1/embed/text-batch"
UPLOAD_PATH = "/v1/embed/image-upload"
EMBEDDINGS_PATH = "/v1/embeddings"


# Long texts are encoded and hashed a slice at a time, so that no second full copy of them is made.
_SLICE_CHARS = 1 << 20


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_text(text: str) -> str:
    """Return SHA-256 hex of `text`'s UTF-8 bytes (UTF-8 encodes each code point alone, so slices join exactly)."""
    digest = hashlib.sha256()
    for start in range(0, len(text), _SLICE_CHARS):
        digest.update(text[start : start + _SLICE_CHARS].encode("utf-8"))
    return digest.hexdigest()


def image_payload_id(image_url: str) -> str:
    """Return the payload id of a single-image request: the URL itself."""
    return image_url


def batch_payload_id(image_urls: Sequence[str]) -> str:
    """Return the payload id of a batch request: SHA-256 of the URLs joined by newlines."""
    digest = hashlib.sha256()
    for index, url in enumerate(image_urls):
        digest.update(b"\n" if index else b"")
        digest.update(url.encode("utf-8"))
    return digest.hexdigest()


def text_payload_id(text: str) -> str:
    """Return the payload id of a text request: SHA-256 of the UTF-8 text."""
    return _sha256_text(text)


def _digest_list(digests: Iterable[str]) -> str:
    """Return SHA-256 hex of the items' own hex digests joined with newlines."""
    return _sha256_hex("\n".join(digests).encode("ascii"))


def text_batch_payload_id(texts: Sequence[str]) -> str:
    """Return the payload id of a text batch: the digest list of the texts' UTF-8 bytes."""
    return _digest_list(_sha256_text(text) for text in texts)


def upload_payload_id(parts: Sequence[bytes]) -> str:
    """Return the payload id of an upload: the digest list of the image parts' bytes, in the order sent."""
    return _digest_list(_sha256_hex(part) for part in parts)


OPTION_NAMES = ("model", "embedding_type", "dimensions")
# The values of `embedding_type` (docs/api.md#output-types; clip_client.vectors reads each).
EMBEDDING_TYPES = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def options_payload_id(payload_id: str, options: Mapping[str, str | int | None]) -> str:
    """Return the payload id that covers the options sent (None: not sent), or `payload_id` when none is.

    Each option goes in as the digest of ``name=value``, so no value can pass for another option's.
    """
    sent = [f"{name}={options[name]}" for name in OPTION_NAMES if options.get(name) is not None]
    if not sent:
        return payload_id
    return _digest_list([_sha256_text(payload_id), *(_sha256_text(item) for item in sent)])


def body_payload_id(body: bytes) -> str:
    """Return the payload id of an OpenAI-style request: SHA-256 of the raw body."""
    return _sha256_hex(body)


def canonical_parts(
    method: str, path: str, payload_id: str, timestamp: int | str, nonce: str | None = None
) -> tuple[str, str, str]:
    """Return the string that gets signed in three parts, (before the payload id, it, after it), which join to it.

    The service signs the parts one by one, so that a long payload id (a data URI) is never copied whole.
    """
    tail = f"|{timestamp}" if nonce is None else f"|{timestamp}|{nonce}"
    return f"{method.upper()}|{path}|", payload_id, tail


def canonical_message(method: str, path: str, payload_id: str, timestamp: int | str, nonce: str | None = None) -> str:
    """Build the string that gets signed."""
    return "".join(canonical_parts(method, path, payload_id, timestamp, nonce))


def legacy_message(image_url: str, timestamp: int | str) -> str:
    """Build the legacy serverless message ``image_url|timestamp``."""
    return f"{image_url}|{timestamp}"


def sign(secret: str | bytes, message: str | Sequence[bytes]) -> str:
    """Return the lowercase hex HMAC-SHA256 of `message` keyed with `secret`.

    `message` is the string, or its UTF-8 bytes in consecutive pieces.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for piece in [message.encode("utf-8")] if isinstance(message, str) else message:
        mac.update(piece)
    return mac.hexdigest()


def signature_matches(secret: str | bytes, message: str | Sequence[bytes], signature: str) -> bool:
    """Compare a received signature with the expected one in constant time."""
    return hmac.compare_digest(sign(secret, message), signature.strip().lower())


def new_nonce() -> str:
    """Return a fresh URL-safe nonce (32 characters)."""
    return secrets.token_urlsafe(24)


def signed_headers(
    secret: str | bytes,
    method: str,
    path: str,
    payload_id: str,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Return the auth headers for one request, timestamped now unless told otherwise."""
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "X-Timestamp": str(ts),
        "X-Signature": sign(secret, canonical_message(method, path, payload_id, ts, nonce)),
    }
    if nonce is not None:
        headers["X-Nonce"] = nonce
    return headers
