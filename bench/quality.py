"""What each output type (`embedding_type`) keeps of float32's ranking: top-10 overlap and recall@10.

Usage: python -m bench.quality [--model ViT-B-32] [--pretrained none|TAG|/path/checkpoint.pt]
                               [--photos ../shared/photos] [--crops 8] [--device cpu] [--json]
       python -m bench.quality --model local-dir:/models/siglip2        # a folder: its own weights

The corpus is the photos of `--photos` (every JPEG there, at each of its sizes) and `--crops` random
crops of each (scale 0.3-1, some flipped), embedded through the service's own loader, decoder and
preprocessing; the queries are generated captions (text to image) and each corpus image (image to
image, itself left out). Each type encodes both the queries and the corpus as the service answers
them (app.inference.outputs), read back by the client's helper (clip_client.vectors): int8 and uint8
rank by the dot product of their codes, binary and ubinary by Hamming distance. For every query:

- top-10 overlap: the share of float32's 10 nearest that the type's 10 nearest hold;
- recall@10: whether float32's nearest is among the type's 10 nearest;
- `binary + rescore`: the 100 nearest by Hamming distance, re-ranked by float32 (as a store that keeps
  binary codes in memory and float32 vectors on disk would).

With random weights (`--pretrained none`, the default here, where no checkpoint can be downloaded) the
vectors are not those of a trained model: the figures say how the types behave on such vectors, not
what they keep of a real model's ranking. Give a real checkpoint for figures that mean that.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from dataclasses import dataclass

import numpy as np
from clip_client.vectors import bits, unpack
from PIL import Image, ImageOps

from app.inference.decode import decode_image
from app.inference.loading import load_clip
from app.inference.outputs import EMBEDDING_TYPES, encode
from app.settings import Settings

K = 10
RESCORE_CANDIDATES = 100
SUBJECTS = [
    "an astronaut", "a cat", "a cup of coffee", "galaxies in deep space", "stained tissue under a microscope",
    "a motorcycle", "the retina of an eye", "a rocket on its launch pad", "a dog", "a bicycle", "a bowl of soup",
    "a city street at night", "a mountain lake", "a portrait of a woman", "a red car", "a plate of fruit",
]  # fmt: skip
TEMPLATES = [
    "a photo of {}.", "a close-up photo of {}.", "a blurry photo of {}.", "a black and white photo of {}.",
    "a cropped photo of {}.", "a bright photo of {}.", "a picture of {} seen from the side.", "{}",
    "a photo of the {} at a distance.", "an old photo of {}.",
]  # fmt: skip


def photos(folder: str, crops: int, seed: int = 0) -> list[Image.Image]:
    """Return the folder's JPEGs, decoded as the service decodes them, and `crops` random crops of each."""
    rng = np.random.default_rng(seed)
    images = []
    for path in sorted(glob.glob(os.path.join(folder, "*.jpg"))):
        with open(path, "rb") as f:
            image = decode_image(f.read(), max_pixels=10**9, draft_size=512)
        images.append(image)
        w, h = image.size
        for _ in range(crops):
            scale, aspect = rng.uniform(0.3, 1.0), rng.uniform(0.75, 1.33)
            cw, ch = min(w, int(w * np.sqrt(scale * aspect))), min(h, int(h * np.sqrt(scale / aspect)))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = image.crop((x, y, x + cw, y + ch))
            images.append(ImageOps.mirror(crop) if rng.random() < 0.5 else crop)
    return images


def captions() -> list[str]:
    return [template.format(subject) for subject in SUBJECTS for template in TEMPLATES]


@dataclass(frozen=True)
class Scores:
    overlap: float
    recall: float


def top(similarity: np.ndarray, k: int) -> np.ndarray:
    """Return each row's k best columns, best first (ties broken by column, as a stable sort does)."""
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def similarity(queries: np.ndarray, corpus: np.ndarray, embedding_type: str, dim: int) -> np.ndarray:
    """Return the scores the type ranks by, both sides encoded as the service answers them."""
    if embedding_type in ("binary", "ubinary"):
        q = np.stack([bits(encode(v, embedding_type), embedding_type, dim) for v in queries]).astype(np.float32)
        c = np.stack([bits(encode(v, embedding_type), embedding_type, dim) for v in corpus]).astype(np.float32)
        return -(q @ (1 - c).T + (1 - q) @ c.T)  # minus the Hamming distance
    q = np.stack([unpack(encode(v, embedding_type), embedding_type) for v in queries])
    c = np.stack([unpack(encode(v, embedding_type), embedding_type) for v in corpus])
    return q @ c.T


def compare(reference: np.ndarray, ranked: np.ndarray) -> Scores:
    """Score a type's top-k against float32's: mean top-k overlap, and how often float32's nearest is in it."""
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(reference[:, :K], ranked[:, :K], strict=True)])
    recall = np.mean([a in b for a, b in zip(reference[:, 0], ranked[:, :K], strict=True)])
    return Scores(float(overlap), float(recall))


def measure(queries: np.ndarray, corpus: np.ndarray, leave_out_self: bool) -> dict[str, Scores]:
    """Return each type's scores, and binary's with float32 rescoring, for one set of queries."""
    dim = corpus.shape[1]
    exact = queries @ corpus.T
    mask = np.eye(len(queries), len(corpus), dtype=bool) if leave_out_self else None
    if mask is not None:
        exact[mask] = -np.inf
    reference = top(exact, K)
    found: dict[str, Scores] = {}
    for embedding_type in EMBEDDING_TYPES:
        scores = similarity(queries, corpus, embedding_type, dim)
        if mask is not None:
            scores[mask] = -np.inf
        found[embedding_type] = compare(reference, top(scores, K))
        if embedding_type == "binary":
            candidates = top(scores, RESCORE_CANDIDATES)
            rescored = np.take_along_axis(exact, candidates, axis=1)
            reranked = np.take_along_axis(candidates, top(rescored, RESCORE_CANDIDATES), axis=1)
            found[f"binary + rescore top {RESCORE_CANDIDATES}"] = compare(reference, reranked)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none", help="a tag, a checkpoint file, or none (random weights)")
    parser.add_argument("--photos", default="../shared/photos")
    parser.add_argument("--crops", type=int, default=8, help="random crops per photo (default 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    spec = {"model": args.model} | ({} if args.model.startswith("local-dir:") else {"pretrained": args.pretrained})
    settings = Settings(allow_insecure_auth=True, device=args.device, models=json.dumps([spec]))  # type: ignore[call-arg]
    started = time.perf_counter()
    embedder = load_clip(settings)
    images = photos(args.photos, args.crops)
    if not images:
        parser.error(f"no JPEG in {args.photos}")
    corpus = np.concatenate(
        [
            np.asarray(embedder.encode_images([embedder.preprocess(i) for i in images[s : s + 32]]))
            for s in range(0, len(images), 32)
        ]
    )
    texts = captions()
    text_vectors = np.asarray(embedder.encode_texts([embedder.tokenize(t) for t in texts]))
    results = {
        "text to image": measure(text_vectors, corpus, leave_out_self=False),
        "image to image": measure(corpus, corpus, leave_out_self=True),
    }
    info = embedder.info
    header = (
        f"{info.model} ({info.pretrained}, {info.dtype} on {info.device}), dim {info.dim}: {len(images)} images, "
        f"{len(texts)} captions, {time.perf_counter() - started:.0f} s"
    )
    if args.json:
        print(json.dumps({"model": header, **{q: {t: vars(s) for t, s in r.items()} for q, r in results.items()}}))
        return 0
    print(header)
    print(
        "| type | bytes | text→image top-10 overlap | text→image recall@10 | image→image top-10 overlap | image→image recall@10 |"
    )
    print("|---|---|---|---|---|---|")
    t2i, i2i = results["text to image"], results["image to image"]
    for name in t2i:
        size = len(encode(corpus[0], name.split()[0]).tobytes())
        print(
            f"| {name} | {size} | {t2i[name].overlap:.3f} | {t2i[name].recall:.3f} | "
            f"{i2i[name].overlap:.3f} | {i2i[name].recall:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
