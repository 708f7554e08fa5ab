"""Visual search with the CLIP service: `index` images, URLs or a video's frames, then `search` them by text.

    export CLIP_POD_BASE_URL=http://127.0.0.1:8000 EMBEDDING_HMAC_SECRET=...
    python -m examples.visual_search index clip.mp4 --index out/clip --every 1
    python -m examples.visual_search search "a red car" --index out/clip -k 8 --html out/red-car.html

`--model NAME` indexes (and searches) with a served model other than the pod's default. The index keeps
the model's embedding-space fingerprint (GET /v1/models) and refuses vectors of any other: a rerun, or
a search, against a pod whose model differs (weights, precision, preprocessing) stops with exit 2.

Exit status: 0 done, 1 the service failed a request or some items (rerun `index` to retry them),
2 bad usage, configuration or index folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from clip_client import ClipClient, ClipClientError, ClipConfigError, make_clip_client
from tqdm import tqdm

from examples.visual_search import page, sources
from examples.visual_search.fileserver import serve_files
from examples.visual_search.indexing import index_items
from examples.visual_search.store import StoreError, VectorStore

RANDOM_WEIGHTS_WARNING = (
    "warning: the service runs with random weights (CLIP_PRETRAINED=none): rankings are meaningless"
)


def _positive(kind: type[int | float]) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = kind(raw)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {raw}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.visual_search", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="embed a folder of images, a file of URLs or a video's frames")
    index.add_argument("source", help="a folder of images, a text file of image URLs, or a video file")
    index.add_argument("--index", required=True, type=Path, help="the index folder (created, or resumed)")
    index.add_argument(
        "--every", type=_positive(float), default=1.0, help="video: seconds between sampled frames (default 1)"
    )
    index.add_argument("--chunk", type=_positive(int), default=64, help="items per save of the index (default 64)")
    index.add_argument("--limit", type=_positive(int), help="embed at most this many new items in this run")
    index.add_argument("--serve-bind", default="127.0.0.1", help="address serving local files to the service")
    index.add_argument("--serve-port", type=int, default=0, help="its port (default: any free one)")
    index.add_argument("--public-url", help="the base URL under which the service reaches those files")
    index.add_argument("--model", help="the served model to embed with (default: the service's default)")
    search = commands.add_parser("search", help="the indexed images or frames closest to a text")
    search.add_argument("text", help='what to look for, e.g. "a red car"')
    search.add_argument("--index", required=True, type=Path, help="the index folder")
    search.add_argument("-k", type=_positive(int), default=8, help="how many results (default 8)")
    search.add_argument("--html", type=Path, help="write the results as a self-contained HTML page here")
    search.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    search.add_argument("--model", help="the served model to embed the text with (default: the index's model)")
    return parser


async def _health(clip: ClipClient) -> dict[str, object]:
    health = await clip.health()
    if health.get("random_weights"):
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    return health


async def _space(clip: ClipClient, model: str | None) -> dict[str, object]:
    """Return the served model's name, weights, dimension and embedding-space fingerprint (GET /v1/models);
    `model` None: the client's model."""
    card = await clip.model(model)
    if not card.get("fingerprint"):
        raise StoreError(
            f"the service gives no fingerprint for model {card.get('id')!r} (not loaded yet?): retry, and the "
            "index can check that its vectors all come from one embedding space"
        )
    return {key: card.get(source) for key, source in _SPACE.items()}


# The manifest's keys about the model, and where GET /v1/models says each.
_SPACE = {"model": "id", "pretrained": "pretrained", "dim": "dim", "fingerprint": "fingerprint"}


async def run_index(args: argparse.Namespace, clip: ClipClient) -> int:
    kind = sources.kind_of(args.source)
    source = Path(args.source).resolve()
    await _health(clip)
    manifest: dict[str, object] = {
        **await _space(clip, None),
        "source": args.source if kind == "urls" else source.name,
        "kind": kind,
        "every_s": args.every if kind == "video" else None,
    }
    store = VectorStore.create_or_open(args.index, manifest)
    root: Path | None = None
    if kind == "urls":
        items = sources.url_items(source)
    elif kind == "folder":
        root, items = source, sources.folder_items(source)
    else:
        root = (args.index / "frames").resolve()
        frames = sources.video_frames(source, root, args.every)
        items = list(tqdm(frames, desc="sampling frames", unit="frame"))
    # URL lists need no file server: the service fetches those URLs itself.
    serving = (
        nullcontext(None) if root is None else serve_files(root, args.serve_bind, args.serve_port, args.public_url)
    )
    with serving as base_url:
        outcome = await index_items(
            items, store, clip, base_url=base_url, root=root, chunk_size=args.chunk, limit=args.limit
        )
    print(f"{outcome.added} added, {outcome.skipped} already indexed, {len(outcome.failures)} failed;"
          f" {store.index.ntotal} in {args.index}")  # fmt: skip
    for name, code, message in outcome.failures[:10]:
        print(f"failed: {name}: {code}: {message}", file=sys.stderr)
    return 1 if outcome.failures else 0


async def run_search(args: argparse.Namespace, clip: ClipClient) -> int:
    store = VectorStore.open(args.index)
    health = await _health(clip)
    space = await _space(clip, None)
    if space["fingerprint"] != store.manifest.get("fingerprint"):
        raise StoreError(
            f"{args.index} holds vectors of embedding space {str(store.manifest.get('fingerprint'))[:16]} "
            f"(model {store.manifest.get('model')!r}), but the service's model {space['model']!r} gives space "
            f"{str(space['fingerprint'])[:16]}: vectors of different spaces cannot be compared; index again"
        )
    query = np.array(await clip.embed_text(args.text), dtype=np.float32)
    hits = store.search(query, args.k)
    if args.json:
        print(json.dumps([{"rank": h.rank, "score": h.score, **h.row} for h in hits]))
    else:
        print("\n".join(page.hit_line(hit) for hit in hits))
    if args.html is not None:
        html = page.render(args.text, hits, args.index, store.manifest, bool(health.get("random_weights")))
        args.html.write_text(html)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _model(args: argparse.Namespace) -> str | None:
    """Return the model to ask for: --model, else (to search) the one the index was built with."""
    if args.model is not None or args.command == "index":
        return args.model
    model = VectorStore.open(args.index).manifest.get("model")
    return model if isinstance(model, str) else None


async def _main(args: argparse.Namespace) -> int:
    async with make_clip_client(model=_model(args)) as clip:
        return await (run_index(args, clip) if args.command == "index" else run_search(args, clip))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except (ClipConfigError, StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClipClientError as exc:
        print(f"error: the service failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
