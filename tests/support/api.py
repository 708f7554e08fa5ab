"""A tiny signed HTTP caller for tests (urllib, so the service's own client is not assumed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from clip_client.signing import (
    UPLOAD_PATH,
    batch_payload_id,
    image_payload_id,
    signed_headers,
    text_batch_payload_id,
    text_payload_id,
    upload_payload_id,
)

SECRET = "test-secret-0123456789abcdef"
PAYLOAD_ID = {
    "/v1/embed/image": lambda body: image_payload_id(body["image_url"]),
    "/v1/embed/image-batch": lambda body: batch_payload_id(body["image_urls"]),
    "/v1/embed/text": lambda body: text_payload_id(body["text"]),
    "/v1/embed/text-batch": lambda body: text_batch_payload_id(body["texts"]),
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


def multipart(
    parts: list[tuple[str, str | None, bytes]], boundary: str = "test-boundary-7MA4YWxk"
) -> tuple[bytes, str]:
    """Encode (name, filename or None for a plain field, bytes) parts; return the body and its Content-Type."""
    out = bytearray()
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" if filename is not None else b"\r\n"
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def upload(
    base: str, parts: list[tuple[str, str | None, bytes]], *, secret: str | None = SECRET
) -> tuple[int, dict, dict[str, str]]:
    """POST an upload signed over its file parts' bytes (unless `secret` is None); return status, JSON, headers."""
    body, content_type = multipart(parts)
    files = [data for _, filename, data in parts if filename is not None]
    headers = {"Content-Type": content_type}
    if secret is not None:
        headers |= signed_headers(secret, "POST", UPLOAD_PATH, upload_payload_id(files))
    return call(base, UPLOAD_PATH, raw=body, secret=None, headers=headers)
