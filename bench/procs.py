"""The CPU time of the bench's child processes; ports, start-up and stopping are `scripts.procs`'s."""

from __future__ import annotations

import os


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """Return the CPU seconds of process `pid`, or of its thread `tid` (Linux /proc; uvicorn's loop runs on tid = pid)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
