"""Operator's command line: `python -m clip_client health|models|image URL|images URL...|text "..."|embed-list LIST --out DIR`.

Prints one JSON document on stdout. Exit status: 0 success; 1 the request (or any image of
`images` or `embed-list`) failed, with `{"error": {"code", "message"}}` printed (plus the server's
`request_id` when known, and a `hint` for an unauthorized request); 2 bad usage or configuration;
130 `embed-list` interrupted (its output saved: run it again to continue). Backend and credentials
come from the environment (see `clip_client.config`). `--model NAME` asks a served model other than the
default (`models` lists them), `--embedding-type` another type than float32 (docs/api.md#output-types).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from clip_client.codes import ErrorCode
from clip_client.errors import ClipAuthError, ClipClientError, ClipConfigError
from clip_client.factory import ClipClient, make_clip_client
from clip_client.signing import EMBEDDING_TYPES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clip_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log retries to stderr")
    chosen = argparse.ArgumentParser(add_help=False)
    chosen.add_argument("--model", metavar="NAME", help="the served model to ask (default: the service's default)")
    typed = argparse.ArgumentParser(add_help=False, parents=[chosen])
    typed.add_argument("--embedding-type", choices=EMBEDDING_TYPES, help="the vectors' type (default float32)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("health", help="show the service's /health")
    commands.add_parser("models", help="list the served models (GET /v1/models)")
    commands.add_parser("image", help="embed one image", parents=[typed]).add_argument("url")
    commands.add_parser("images", help="embed many images (batched)", parents=[typed]).add_argument("urls", nargs="+")
    commands.add_parser("text", help="embed one text", parents=[typed]).add_argument("text")
    bulk = commands.add_parser(
        "embed-list",
        parents=[chosen],
        help="embed a list file (one URL or local path a line) into DIR/embeddings.npy, resumably",
        description="Row i of DIR/embeddings.npy is line i+1 of LIST (zero when it failed or is blank or a "
        "# comment); failures go to DIR/failures.jsonl. Run it again with the same --out to continue.",
    )
    bulk.add_argument("list", metavar="LIST", help="file with one image URL or local file path per line")
    bulk.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    bulk.add_argument(
        "--concurrency", type=_positive, default=4, metavar="N", help="requests in flight at most (default 4)"
    )
    bulk.add_argument("--limit", type=_positive, default=None, metavar="N", help="embed at most N more lines")
    bulk.add_argument("--retry-failed", action="store_true", help="embed again the lines that failed before")
    return parser


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw} is below 1")
    return value


async def _run(client: ClipClient, args: argparse.Namespace) -> tuple[dict[str, object], int]:
    async with client:
        if args.command == "health":
            return await client.health(), EXIT_OK
        if args.command == "models":
            return {"object": "list", "data": await client.models()}, EXIT_OK
        if args.command in ("image", "text"):
            vector = await (client.embed_image(args.url) if args.command == "image" else client.embed_text(args.text))
            return _single(vector, args.embedding_type), EXIT_OK
        results = await client.embed_images(args.urls)
        failed = sum(1 for r in results if not r.ok)
        document = {"results": [r.to_dict() for r in results], "succeeded": len(results) - failed, "failed": failed}
        return document, EXIT_FAILED if failed else EXIT_OK


def _single(vector: list[float], embedding_type: str | None) -> dict[str, object]:
    """Return what `image` and `text` print: the vector, its dimension, and its type when not float32."""
    if embedding_type is None or embedding_type == "float32":
        return {"embedding": vector, "dim": len(vector)}
    bits = embedding_type in ("binary", "ubinary")
    return {"embedding": vector, "dim": len(vector) * 8 if bits else len(vector), "embedding_type": embedding_type}


_SECRET_CHECK = "check that EMBEDDING_HMAC_SECRET here is one of the server's EMBEDDING_HMAC_SECRET keys"
# What to check after each 401 code of the service (clip_client.codes.AUTH_CODES).
AUTH_HINTS: dict[str, str] = {
    ErrorCode.MISSING_AUTH_HEADERS: "the server got no signature: check that EMBEDDING_HMAC_SECRET is set here, "
    "and that no proxy in between drops the X-Timestamp, X-Signature and X-Nonce headers",
    ErrorCode.MALFORMED_AUTH_HEADERS: "a signature header arrived altered: check that no proxy in between "
    "rewrites X-Timestamp, X-Signature or X-Nonce",
    ErrorCode.TIMESTAMP_OUT_OF_WINDOW: "this machine's clock is further from the server's than AUTH_MAX_SKEW_S "
    "(the message gives both clocks): synchronise it, e.g. with NTP",
    ErrorCode.SIGNATURE_MISMATCH: f"{_SECRET_CHECK}, and that no proxy in between rewrites the path or the body",
    ErrorCode.NONCE_REUSED: "the server already accepted a request with this X-Nonce: the client sends a new "
    "one with every attempt, so something in between sent the request twice",
    ErrorCode.API_KEY_INVALID: "check that the API key sent is one of the server's API_KEYS",
}


def auth_hint(exc: ClipAuthError, backend: str) -> str:
    """Say what to check after a 401: from its code when the service says which check failed."""
    checks = AUTH_HINTS.get(exc.code)
    if checks is None:
        checks = (
            f"{_SECRET_CHECK}, and that this machine's clock is within the server's AUTH_MAX_SKEW_S (300 s "
            "unless set) of the server's clock"
        )
        if backend == "runpod_serverless":
            checks += "; a 401 from RunPod itself means RUNPOD_API_KEY is wrong"
    if exc.request_id:
        return f"{checks}; the server logs the refusal as 'auth refused' with request_id {exc.request_id}"
    return f"{checks}; the server logs the refusal as 'auth refused'"


def error_document(exc: ClipClientError, backend: str | None) -> dict[str, object]:
    """Return the `{"error": ...}` the CLI prints for `exc`."""
    error: dict[str, object] = {"code": exc.code, "message": exc.message}
    request_id = getattr(exc, "request_id", None)
    if request_id:
        error["request_id"] = request_id
    if isinstance(exc, ClipAuthError) and backend is not None:
        error["hint"] = auth_hint(exc, backend)
    return {"error": error}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.ERROR,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    backend: str | None = None
    try:
        client = make_clip_client(
            model=getattr(args, "model", None), embedding_type=getattr(args, "embedding_type", None)
        )
        backend = client.backend
        if args.command == "embed-list":
            from clip_client.bulk import embed_list  # numpy and tqdm: loaded for this command only

            document, status = embed_list(
                client,
                args.list,
                args.out,
                concurrency=args.concurrency,
                limit=args.limit,
                retry_failed=args.retry_failed,
                model=args.model,
            )
        else:
            document, status = asyncio.run(_run(client, args))
    except ClipClientError as exc:
        document = error_document(exc, backend)
        status = EXIT_USAGE if isinstance(exc, ClipConfigError) else EXIT_FAILED
    try:
        print(json.dumps(document), flush=True)
    except BrokenPipeError:
        # The reader went away (`| head`): no traceback, and none again when Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return status


if __name__ == "__main__":
    sys.exit(main())
