"""Servers in child processes, for `make smoke`, the tests and the benchmarks: ports, start-up, waiting, stopping.

One home for what each of them needs: a free port, `python -m app` (or any server) started with its
output in a log file, a wait until it answers, and a stop that always reaps the process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The service and the client, importable in a child process from anywhere.
PYTHONPATH = f"{ROOT}{os.pathsep}{ROOT / 'client'}"


class NotUp(RuntimeError):
    """A server did not answer in time, or exited first; the message says which and quotes its log."""


def free_port() -> int:
    """Return a port of 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(log: Path | None, chars: int = 3000) -> str:
    """Return the end of a log file, or "" when there is none."""
    if log is None or not log.exists():
        return ""
    return log.read_bytes()[-chars:].decode(errors="replace")


def wait_until_up(
    url: str, deadline: float, process: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Return once GET `url` answers 200; raise NotUp when `process` exits or time.monotonic() passes `deadline`."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            why = f"exited with status {process.returncode}" if exited and process else "did not answer in time"
            tail = log_tail(log)
            where = f"\n--- the end of its log, {log}:\n{tail}" if tail else ""
            raise NotUp(f"the server behind {url} {why}{where}")
        time.sleep(0.05)


def wait_healthy(
    base: str, deadline: float, process: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Return once `base`/health answers 200 (the model is loaded); see `wait_until_up`."""
    wait_until_up(f"{base}/health", deadline, process, log)


def spawn(args: Sequence[str], env: Mapping[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `python <args>` in the repository root; stdout and stderr go to `log` (a file never fills as a pipe can)."""
    full_env = {"PYTHONPATH": PYTHONPATH, **env}
    if log is None:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env)
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def serving(
    args: Sequence[str],
    env: Mapping[str, str],
    port: int,
    *,
    log: Path | None = None,
    ready_path: str = "/health",
    timeout_s: float = 300,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start `python <args>` (a server on 127.0.0.1:`port`), yield it and its base URL once `ready_path`
    answers 200, stop it afterwards."""
    process = spawn(args, env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base + ready_path, time.monotonic() + timeout_s, process, log)
        yield process, base
    finally:
        stop(process)


@contextmanager
def app_server(
    env: Mapping[str, str], *, log: Path | None = None, timeout_s: float = 300, module: str = "app"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run `python -m app` (or `module`, which runs it with a seam of its own) on a free port of 127.0.0.1
    with `env` added to this process's environment; yield it and its base URL once /health is 200, stop
    it afterwards."""
    port = free_port()
    full_env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port)}
    with serving(["-m", module], full_env, port, log=log, timeout_s=timeout_s) as running:
        yield running


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """Terminate the processes still running, then reap each; kill one that has not exited after 10 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
