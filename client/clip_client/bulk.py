"""`python -m clip_client embed-list LIST --out DIR`: embed every image of a list, resumably.

URLs go in batches of the server's `max_batch_size` through `embed_images`; local files one by one,
inline. At most `concurrency` requests are in flight. Every row recorded is made durable at least
once a second and when the run ends, however it ends (Ctrl-C and SIGTERM included): a re-run with
the same `--out` embeds only what is still pending (see `clip_client.bulk_output`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

from tqdm import tqdm

from clip_client._tasks import drain
from clip_client.bulk_output import PENDING, BulkOutput
from clip_client.codes import ErrorCode
from clip_client.errors import ClipAuthError, ClipClientError, ClipConfigError
from clip_client.factory import ClipClient
from clip_client.listfile import Entry, Kind, read_entries

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
CHECKPOINT_EVERY_S = 1.0
# Refusals that every other line would meet too: the run stops instead of failing each line.
_FATAL = (ClipAuthError, ClipConfigError)
Job = list[Entry]  # one local file, or up to max_batch_size URLs


def plan(entries: list[Entry], progress_pending: list[bool], batch_size: int, limit: int | None) -> list[Job]:
    """Return the jobs for the pending entries (the first `limit` of them), in line order."""
    todo = [e for e in entries if e.kind != Kind.SKIP and progress_pending[e.row]][:limit]
    jobs: list[Job] = []
    batch: Job = []
    for entry in todo:
        if entry.kind == Kind.FILE:
            jobs.append([entry])
            continue
        batch.append(entry)
        if len(batch) == batch_size:
            jobs.append(batch)
            batch = []
    if batch:
        jobs.append(batch)
    return sorted(jobs, key=lambda job: job[0].row)


class BulkRun:
    """One run over a list: sends the jobs, records each outcome, moves the progress bar."""

    def __init__(self, client: ClipClient, entries: list[Entry], output: BulkOutput) -> None:
        self.client = client
        self.entries = entries
        self.output = output
        self._last_checkpoint = time.monotonic()
        self._bar: tqdm | None = None

    async def run(self, concurrency: int, limit: int | None) -> None:
        """Embed the pending lines; the output is checkpointed however this ends."""
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        if current is not None:
            # SIGTERM (a stopped container, `kill`) ends the run as Ctrl-C does, output saved.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGTERM, current.cancel)
        counts = self.output.counts()
        self._bar = tqdm(
            total=len(self.entries) - counts["skipped"],
            initial=counts["succeeded"] + counts["failed"],
            unit="image",
            file=sys.stderr,
            disable=None,  # quiet unless stderr is a terminal
            dynamic_ncols=True,
        )
        try:
            async with self.client:
                size = await self.client.max_batch_size()
                pending: list[bool] = (self.output.progress == PENDING).tolist()
                await drain(self._do, plan(self.entries, pending, size, limit), concurrency)
        finally:
            self._bar.close()
            self.output.close()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGTERM)

    async def _do(self, job: Job) -> None:
        if job[0].kind == Kind.FILE:
            await self._do_file(job[0])
        else:
            await self._do_urls(job)
        assert self._bar is not None
        self._bar.update(len(job))
        self._bar.set_postfix(failed=len(self.output.failures), refresh=False)
        if time.monotonic() - self._last_checkpoint >= CHECKPOINT_EVERY_S:
            self.output.checkpoint()
            self._last_checkpoint = time.monotonic()

    async def _do_file(self, entry: Entry) -> None:
        try:
            vector = await self.client.embed_image_file(entry.target)
        except OSError as exc:
            self.output.record_failure(entry, ErrorCode.READ_FAILED, f"{exc.strerror or exc}: {entry.target}")
        except _FATAL:
            raise
        except ClipClientError as exc:
            self.output.record_failure(entry, exc.code, exc.message)
        else:
            self.output.record_ok(entry, vector)

    async def _do_urls(self, batch: Job) -> None:
        try:
            results = await self.client.embed_images([e.target for e in batch])
        except _FATAL:
            raise
        except ClipClientError as exc:  # the whole request failed (unavailable after retries...)
            for entry in batch:
                self.output.record_failure(entry, exc.code, exc.message)
            return
        for entry, result in zip(batch, results, strict=True):
            if result.embedding is not None:
                self.output.record_ok(entry, result.embedding)
            else:
                error = result.error
                self.output.record_failure(entry, error.code if error else "unknown", error.message if error else "")


def embed_list(
    client: ClipClient,
    list_path: str,
    out_dir: str,
    *,
    concurrency: int = 4,
    limit: int | None = None,
    retry_failed: bool = False,
    model: str | None = None,
) -> tuple[dict[str, object], int]:
    """Run `embed-list`; return the summary document and the exit status.

    `model` is the served model the client asks (None: the default); the output folder remembers it and
    refuses to go on with another, as rows of two models cannot be compared.
    """
    try:
        content = Path(list_path).read_bytes()
        entries = read_entries(content)
    except OSError as exc:
        raise ClipConfigError(f"cannot read the list {list_path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ClipConfigError(f"the list {list_path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        output = BulkOutput(Path(out_dir), content, entries, retry_failed=retry_failed, model=model)
    except OSError as exc:
        raise ClipConfigError(f"cannot write the output folder {out_dir}: {exc.strerror or exc}") from None
    interrupted = False
    try:
        asyncio.run(BulkRun(client, entries, output).run(concurrency, limit))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
    counts = output.counts()
    document: dict[str, object] = {
        "lines": len(entries),
        **counts,
        "dim": output.dim,
        "embeddings": str(output.embeddings_path) if output.dim is not None else None,
        "failures": str(output.failures_path),
        "interrupted": interrupted,
    }
    if model is not None:
        document["model"] = model
    if interrupted:
        return document, EXIT_INTERRUPTED
    return document, EXIT_FAILED if counts["failed"] else EXIT_OK
