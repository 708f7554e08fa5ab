"""Child processes of the bench scripts: a free port, waiting for /health, their CPU time, stopping them for good."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Return once `base`/health answers 200; exit if `server` dies or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the server at {base} did not become healthy") from None
            time.sleep(0.2)


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """Return the CPU seconds of process `pid`, or of its thread `tid` (Linux /proc; uvicorn's loop runs on tid = pid)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """Terminate the processes, then reap each; kill one that has not exited after 10 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
