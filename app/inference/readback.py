"""Bring a batch's vectors back from the device, and put each failed image's error in its place.

`start` queues the copy and returns at once; `PendingVectors.wait` waits for it. On CUDA the copy goes
to pinned memory behind an event; with CUDA_BLOCKING_WAIT=1 the event is a blocking one, so that the
waiting thread sleeps until the GPU is done instead of spinning on a host core for the whole forward
pass (what `.cpu()` does).
"""

from __future__ import annotations

import numpy as np
import torch

VectorRows = np.ndarray | list[np.ndarray | Exception]


class PendingVectors:
    """The vectors of one batch on their way back from the device."""

    def __init__(
        self,
        host: torch.Tensor | None,
        event: torch.cuda.Event | None,
        failures: dict[int, Exception],
        count: int,
    ) -> None:
        self._host = host
        self._event = event
        self._failures = failures
        self._count = count

    def wait(self) -> VectorRows:
        """Block until the vectors are on the host; return one row (or the item's error) per payload, in order."""
        if self._event is not None:
            self._event.synchronize()
        # A copy: the rows outlive the batch (the cache keeps them), pinned memory should not.
        rows = self._host.numpy().copy() if self._host is not None else np.empty((0, 0), dtype=np.float32)
        if not self._failures:
            return rows
        vectors = iter(rows)
        return [self._failures[i] if i in self._failures else next(vectors) for i in range(self._count)]


def start_readback(
    vectors: torch.Tensor | None, failures: dict[int, Exception], count: int, *, blocking: bool
) -> PendingVectors:
    """Queue the copy of `vectors` (float32, one row per payload without a failure) to the host."""
    if vectors is None or vectors.device.type != "cuda":
        return PendingVectors(vectors, None, failures, count)
    host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
    host.copy_(vectors, non_blocking=True)
    event = torch.cuda.Event(blocking=blocking)  # type: ignore[no-untyped-call]
    event.record()
    return PendingVectors(host, event, failures, count)
