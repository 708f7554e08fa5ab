"""The output folder of `embed-list`, written so that an interrupted run can resume and nothing is left corrupt.

DIR/embeddings.npy  float32 (lines × dim), row i = line i+1; rows not embedded (failed, skipped) are zero.
                    A memory-mapped `.npy`: its header is written once, rows in place.
DIR/progress.npy    uint8 per line: 0 pending, 1 done, 2 failed, 3 skipped; replaced whole (temp file +
                    os.replace) only after the rows it calls done are flushed, so it never claims a row
                    that is not on disk. A re-run embeds the pending lines (and the failed ones with
                    --retry-failed).
DIR/state.json      what the folder belongs to: the list's SHA-256 and line count, the model asked (`--model`;
                    null: the service's default), the vectors' dim.
DIR/failures.jsonl  one `{"line", "input", "code", "message"}` per failed line, by line number.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from clip_client.errors import ClipConfigError
from clip_client.listfile import Entry, Kind

PENDING, DONE, FAILED, SKIPPED = 0, 1, 2, 3
FORMAT = 1


def replace_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write `path` through a temporary file and os.replace: readers see the old or the new file, whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class BulkOutput:
    """The files of one list's run; `open()` makes or resumes them, `close()` leaves them final."""

    def __init__(
        self,
        folder: Path,
        list_bytes: bytes,
        entries: list[Entry],
        *,
        retry_failed: bool = False,
        model: str | None = None,
    ) -> None:
        self.folder = folder
        self.embeddings_path = folder / "embeddings.npy"
        self.failures_path = folder / "failures.jsonl"
        self._state_path = folder / "state.json"
        self._progress_path = folder / "progress.npy"
        self._state: dict[str, object] = {
            "format": FORMAT,
            "list_sha256": hashlib.sha256(list_bytes).hexdigest(),
            "lines": len(entries),
            "model": model,
            "dim": None,
        }
        self.progress = np.zeros(len(entries), dtype=np.uint8)
        self.failures: dict[int, dict[str, object]] = {}
        self._vectors: np.memmap | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self._resume(retry_failed)
        self.progress[[e.row for e in entries if e.kind == Kind.SKIP]] = SKIPPED
        self._write_failures()
        self._failures_file = open(self.failures_path, "a", encoding="utf-8")  # noqa: SIM115  # closed in close()

    @property
    def dim(self) -> int | None:
        dim = self._state["dim"]
        return dim if isinstance(dim, int) else None

    def _resume(self, retry_failed: bool) -> None:
        if not self._state_path.exists():
            if self.embeddings_path.exists():
                raise ClipConfigError(f"{self.folder} holds an embeddings.npy of something else; pass another --out")
            self._save_state()
            return
        saved = json.loads(self._state_path.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in ("format", "list_sha256", "lines")} != {
            k: self._state[k] for k in ("format", "list_sha256", "lines")
        }:
            raise ClipConfigError(
                f"{self.folder} holds the output of another list (or of this one before it was edited); "
                "pass another --out, or delete the folder to start again"
            )
        if saved.get("model") != self._state["model"]:
            raise ClipConfigError(
                f"{self.folder} holds vectors of model {saved.get('model') or 'the default'}, not "
                f"{self._state['model'] or 'the default'}: vectors of two models cannot share a file; pass "
                "another --out, or the same --model"
            )
        self._state["dim"] = saved.get("dim")
        if self._progress_path.exists():
            self.progress = np.load(self._progress_path)
        if self.dim is not None:
            try:
                self._vectors = np.lib.format.open_memmap(self.embeddings_path, mode="r+")
            except (OSError, ValueError) as exc:
                raise ClipConfigError(
                    f"{self.embeddings_path} cannot be resumed ({exc}); delete {self.folder} to start again"
                ) from None
        if retry_failed:
            self.progress[self.progress == FAILED] = PENDING
        for line in self.failures_path.read_text(encoding="utf-8").splitlines() if self.failures_path.exists() else ():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the last line of a run killed while writing it; its row is still pending
            row = record.get("line", 0) - 1 if isinstance(record, dict) else -1
            if 0 <= row < len(self.progress) and self.progress[row] == FAILED:
                self.failures[row] = record

    def _save_state(self) -> None:
        replace_atomically(self._state_path, lambda f: f.write(json.dumps(self._state).encode()))

    def _write_failures(self) -> None:
        lines = "".join(json.dumps(self.failures[row]) + "\n" for row in sorted(self.failures))
        replace_atomically(self.failures_path, lambda f: f.write(lines.encode()))

    def record_ok(self, entry: Entry, vector: list[float]) -> None:
        """Keep the embedding of `entry` (the file is created at the first one, when the dim is known)."""
        if self._vectors is None:
            self._vectors = np.lib.format.open_memmap(
                self.embeddings_path, mode="w+", dtype=np.float32, shape=(len(self.progress), len(vector))
            )
            self._vectors.flush()
            self._state["dim"] = len(vector)
            self._save_state()
        if len(vector) != self.dim:
            raise ClipConfigError(
                f"the service answered {len(vector)}-dimensional vectors, but {self.folder} holds {self.dim}-"
                "dimensional ones (was the model changed?); pass another --out"
            )
        self._vectors[entry.row] = vector
        self.progress[entry.row] = DONE

    def record_failure(self, entry: Entry, code: str, message: str) -> None:
        """Note why `entry` failed (its row stays zero)."""
        record: dict[str, object] = {"line": entry.line, "input": entry.text, "code": code, "message": message}
        self.failures[entry.row] = record
        self._failures_file.write(json.dumps(record) + "\n")
        self.progress[entry.row] = FAILED

    def checkpoint(self) -> None:
        """Make every row recorded so far durable, then say so in progress.npy."""
        if self._vectors is not None:
            self._vectors.flush()
        self._failures_file.flush()
        os.fsync(self._failures_file.fileno())
        replace_atomically(self._progress_path, lambda f: np.save(f, self.progress))

    def close(self) -> None:
        """Checkpoint and leave failures.jsonl sorted by line."""
        self.checkpoint()
        self._failures_file.close()
        self._write_failures()
        self._vectors = None

    def counts(self) -> dict[str, int]:
        """Return how many lines are succeeded, failed, skipped and pending."""
        done, failed, skipped = (int(np.count_nonzero(self.progress == s)) for s in (DONE, FAILED, SKIPPED))
        return {
            "succeeded": done,
            "failed": failed,
            "skipped": skipped,
            "pending": len(self.progress) - done - failed - skipped,
        }
