"""The CPU time of the bench's child processes, and how busy the GPU was; ports, start-up and stopping are
`scripts.procs`'s."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
from typing import Self


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """Return the CPU seconds of process `pid`, or of its thread `tid` (Linux /proc; uvicorn's loop runs on tid = pid)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GpuBusy:
    """Sample the GPU's utilisation with nvidia-smi while a load runs; mean percent, or None without one."""

    def __enter__(self) -> Self:
        self.percent: float | None = None
        self._proc: subprocess.Popen[str] | None = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        values = [float(v) for v in out.split() if v.replace(".", "", 1).isdigit()]
        self.percent = statistics.fmean(values) if values else None
