"""Count failures of the shared store and log them without flooding the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class FailureLog:
    """Count every failure; log one warning per `interval_s` at most, with how many were not logged."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._what = what
        self._interval_s = interval_s
        self._clock = clock
        self._last_logged: float | None = None
        self._unlogged = 0
        self.count = 0
        self.on_failure: Callable[[], None] | None = None  # called on each failure (the metrics' counter)

    def note(self, exc: BaseException) -> bool:
        """Count `exc`; log it unless a warning went out less than `interval_s` ago. Return whether it logged."""
        self.count += 1
        if self.on_failure is not None:
            self.on_failure()
        now = self._clock()
        if self._last_logged is not None and now - self._last_logged < self._interval_s:
            self._unlogged += 1
            return False
        self._log.warning(
            "%s: shared store failed (%s: %s); %d similar failures not logged since the last warning",
            self._what,
            type(exc).__name__,
            exc,
            self._unlogged,
        )
        self._last_logged = now
        self._unlogged = 0
        return True
