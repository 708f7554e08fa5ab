"""The vector index on disk: a faiss inner-product index, one JSON line of metadata per vector, a manifest.

Vectors are L2-normalised, so the inner product is the cosine similarity and the flat index is an
exact (brute-force) search. Rows are appended to items.jsonl before index.faiss is replaced, so after
a crash the metadata can only be longer than the index; opening trims it to the index's length.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.jsonl"
MANIFEST_FILE = "manifest.json"


class StoreError(Exception):
    """The index on disk cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Hit:
    rank: int
    score: float
    row: dict[str, object]


class VectorStore:
    """An index directory: `open` it, `add` vectors with their rows, `save`, `search`."""

    def __init__(self, directory: Path, manifest: dict[str, object], index: faiss.Index, rows: list[dict[str, object]]):
        self.directory = directory
        self.manifest = manifest
        self.index = index
        self.rows = rows
        self._unsaved = 0

    @classmethod
    def open(cls, directory: Path) -> VectorStore:
        """Load an existing index directory."""
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.exists():
            raise StoreError(f"{directory} holds no index ({MANIFEST_FILE} missing): run `index` first")
        manifest = json.loads(manifest_path.read_text())
        dim = int(manifest["dim"])
        index_path = directory / INDEX_FILE
        index = faiss.read_index(str(index_path)) if index_path.exists() else faiss.IndexFlatIP(dim)
        rows: list[dict[str, object]] = []
        items_path = directory / ITEMS_FILE
        if items_path.exists():
            with items_path.open() as lines:
                rows = [json.loads(line) for line in lines if line.strip()]
        if len(rows) < index.ntotal:
            raise StoreError(
                f"{directory}: {index.ntotal} vectors but {len(rows)} rows; delete the folder and index again"
            )
        del rows[index.ntotal :]  # rows of a chunk whose vectors were never saved (interrupted run)
        return cls(directory, manifest, index, rows)

    @classmethod
    def create_or_open(cls, directory: Path, manifest: dict[str, object]) -> VectorStore:
        """Open the index in `directory`, or start one; refuse to mix vectors of another model or source."""
        if (directory / MANIFEST_FILE).exists():
            store = cls.open(directory)
            for key in ("fingerprint", "model", "pretrained", "dim", "source"):
                if store.manifest.get(key) != manifest.get(key):
                    raise StoreError(
                        f"{directory} was indexed with {key}={store.manifest.get(key)!r}, now {manifest.get(key)!r}: "
                        "use another index folder, or delete this one"
                    )
            return store
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(directory / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
        (directory / ITEMS_FILE).write_text("")
        return cls(directory, manifest, faiss.IndexFlatIP(int(str(manifest["dim"]))), [])

    def done_uids(self) -> set[str]:
        return {str(row["uid"]) for row in self.rows}

    def add(self, vectors: np.ndarray, rows: list[dict[str, object]]) -> None:
        """Add normalised copies of `vectors` (one per row), in memory until `save`."""
        matrix = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(rows), -1)
        faiss.normalize_L2(matrix)
        start = self.index.ntotal
        self.index.add(matrix)
        self.rows.extend({**row, "key": start + i} for i, row in enumerate(rows))
        self._unsaved += len(rows)

    def save(self) -> None:
        """Append the new rows, then replace the index file in one rename."""
        if not self._unsaved:
            return
        with (self.directory / ITEMS_FILE).open("a") as out:
            for row in self.rows[-self._unsaved :]:
                out.write(json.dumps(row) + "\n")
            out.flush()
            os.fsync(out.fileno())
        _write_atomic(self.directory / INDEX_FILE, faiss.serialize_index(self.index).tobytes())
        self._unsaved = 0

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """Return the `k` rows most similar to `query` (cosine), best first."""
        vector = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        faiss.normalize_L2(vector)
        scores, keys = self.index.search(vector, min(k, self.index.ntotal))
        return [
            Hit(rank, float(score), self.rows[int(key)])
            for rank, (score, key) in enumerate(zip(scores[0], keys[0], strict=True), start=1)
            if key >= 0
        ]

    def vectors(self) -> np.ndarray:
        """Return every stored vector, in key order."""
        return self.index.reconstruct_n(0, self.index.ntotal)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
