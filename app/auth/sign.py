"""Print the signature headers for a request, for curl: `python -m app.auth.sign POST /v1/embed/text --text "a cat"`.

The secret comes from EMBEDDING_HMAC_SECRET (the first one when several are listed). Output is one
`-H Name:value` pair per header (values hold no spaces), ready for `curl $(python -m app.auth.sign ...)`;
`--json` prints a dict instead. An upload is signed over its files' bytes: `--files cat.jpg dog.jpg`
for `curl -F image=@cat.jpg -F image=@dog.jpg`, in the same order. `--model`, `--embedding-type` and
`--dimensions` sign the options the request sends (in its JSON body, or the upload's query string).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from clip_client.signing import (
    batch_payload_id,
    body_payload_id,
    image_payload_id,
    new_nonce,
    options_payload_id,
    signed_headers,
    text_batch_payload_id,
    text_payload_id,
    upload_payload_id,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.auth.sign", description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["POST"], help="HTTP method")
    parser.add_argument("path", help="request path, e.g. /v1/embed/image")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--url", help="image_url of /v1/embed/image")
    group.add_argument("--urls", nargs="+", help="image_urls of /v1/embed/image-batch")
    group.add_argument("--text", help="text of /v1/embed/text")
    group.add_argument("--texts", nargs="+", help="texts of /v1/embed/text-batch")
    group.add_argument("--files", nargs="+", type=Path, help="image files of /v1/embed/image-upload, in order")
    group.add_argument("--body", help="the raw JSON body of /v1/embeddings, exactly as sent")
    parser.add_argument("--model", help="the body's (or the upload's query) model")
    parser.add_argument("--embedding-type", help="the body's (or the upload's query) embedding_type")
    parser.add_argument("--dimensions", type=int, help="the body's (or the upload's query) dimensions")
    parser.add_argument("--nonce", action="store_true", help="add a fresh X-Nonce")
    parser.add_argument("--json", action="store_true", help="print the headers as JSON")
    args = parser.parse_args(argv)

    secret = os.environ.get("EMBEDDING_HMAC_SECRET", "").split(",")[0].strip()
    if not secret:
        print("EMBEDDING_HMAC_SECRET is not set", file=sys.stderr)
        return 2
    options = {"model": args.model, "embedding_type": args.embedding_type, "dimensions": args.dimensions}
    if args.body is not None and any(value is not None for value in options.values()):
        print("/v1/embeddings signs its whole body: put the options in --body", file=sys.stderr)
        return 2
    try:
        payload = options_payload_id(_payload_id(args), options)
    except OSError as exc:
        print(f"cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    headers = signed_headers(secret, args.method, args.path, payload, nonce=new_nonce() if args.nonce else None)
    if args.json:
        print(json.dumps(headers))
    else:
        print(" ".join(f"-H {k}:{v}" for k, v in headers.items()))
    return 0


def _payload_id(args: argparse.Namespace) -> str:
    """Return the payload id of the one body option given."""
    if args.url is not None:
        return image_payload_id(args.url)
    if args.urls is not None:
        return batch_payload_id(args.urls)
    if args.texts is not None:
        return text_batch_payload_id(args.texts)
    if args.files is not None:
        return upload_payload_id([path.read_bytes() for path in args.files])
    if args.body is not None:
        return body_payload_id(args.body.encode("utf-8"))
    return text_payload_id(args.text)


if __name__ == "__main__":
    sys.exit(main())
