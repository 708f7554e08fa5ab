"""The arbiter's halt when several workers fail to boot at once, with real child processes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

from app.ops.supervisor import PodSupervisor, _PodArbiter
from tests.support.data import tiny_settings


@dataclass
class _Tmp:
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class _Child:
    """What the arbiter's reaping reads of a worker: its slot, its pid and its heartbeat file."""

    pid: int
    index: int
    tmp: _Tmp = field(default_factory=_Tmp)


def _child_exiting_with(code: int) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(code)
    # Wait for the exit without reaping it: the arbiter's own waitpid does that.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    return pid


def test_pod_arbiter_halt_exits_with_boot_error_when_every_worker_failed_to_boot(tmp_path):
    supervisor = PodSupervisor(tiny_settings(workers=2, state_url="redis://127.0.0.1:1/0"), tmp_path, None)
    arbiter = _PodArbiter(supervisor)
    for index in range(2):
        pid = _child_exiting_with(Arbiter.WORKER_BOOT_ERROR)
        arbiter.WORKERS[pid] = _Child(pid, index)
    with pytest.raises(HaltServer) as first:
        arbiter.reap_workers()  # as the arbiter's main loop does on SIGCHLD
    with pytest.raises(SystemExit) as exited:
        arbiter.halt(first.value.reason, first.value.exit_status)  # as Arbiter.run does with the HaltServer
    assert (exited.value.code, arbiter.WORKERS) == (Arbiter.WORKER_BOOT_ERROR, {})
