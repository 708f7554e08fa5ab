"""A tiny signed HTTP caller for tests (urllib, so the service's own client is not assumed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from clip_client.signing import batch_payload_id, image_payload_id, signed_headers, text_payload_id

SECRET = "test-secret-0123456789abcdef"
PAYLOAD_ID = {
    "/v1/embed/image": lambda body: image_payload_id(body["image_url"]),
    "/v1/embed/image-batch": lambda body: batch_payload_id(body["image_urls"]),
    "/v1/embed/text": lambda body: text_payload_id(body["text"]),
}


def call(
    base: str,
    path: str,
    body: object | None = None,
    *,
    secret: str | None = SECRET,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 60,
) -> tuple[int, dict, dict[str, str]]:
    """POST `body` (or GET when None), signed with `secret` unless None; return status, JSON, headers."""
    all_headers = {"Content-Type": "application/json"}
    if body is not None and secret is not None:
        all_headers |= signed_headers(secret, "POST", path, PAYLOAD_ID[path](body))
    all_headers |= headers or {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, headers=all_headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        payload = err.read()
        return err.code, json.loads(payload) if payload else {}, dict(err.headers)
