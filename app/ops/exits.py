"""The exit codes of `python -m app`, one and WORKERS > 1 alike, and the error that ends start-up with one.

README.pod.md (Lifecycle) lists them; tests/unit/test_exits.py checks that the list matches.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the process's exit status says."""

    STOPPED = 0  # stopped by SIGTERM, SIGINT or SIGQUIT, after draining
    START_FAILED = 1  # the model could not load, or the app failed to start: the log says why
    BAD_SETUP = 2  # an invalid setting, or no usable folder for the pod's metrics (TMPDIR)
    PORT_UNAVAILABLE = 3  # HOST:PORT cannot be listened on: in use, or not allowed


class StartupError(Exception):
    """Start-up cannot go on; `message` says what to change, `exit_code` is the process's status."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
