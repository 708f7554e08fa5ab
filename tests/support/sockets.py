"""A server's side of its TCP connections, read from outside it: which process holds each, and its options.

Linux only: /proc maps each connection to the socket inode a process holds, and pidfd_getfd(2) copies a
descriptor out of another process (a child of the test's, or any process of the same user) so that its
socket options can be read as the server set them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from pathlib import Path

import pytest

_SYS_PIDFD_OPEN = 434
_SYS_PIDFD_GETFD = 438
_ESTABLISHED = "01"


def _connections(port: int) -> dict[int, int]:
    """Return {socket inode: remote port} for the established TCP connections whose local port is `port`."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == _ESTABLISHED and int(local.rsplit(":", 1)[1], 16) == port:
                found[inode] = int(remote.rsplit(":", 1)[1], 16)
    return found


def held(port: int, pids: list[int] | None = None) -> dict[int, tuple[int, int]]:
    """Return {client port: (pid, fd)}: which process (of `pids`, else any) holds the server side of each
    connection to `port`."""
    by_inode = _connections(port)
    holders = {}
    if pids is None:
        pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    for pid in pids:
        try:
            entries = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # exited meanwhile
        for entry in entries:
            try:
                target = os.readlink(entry)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:[") and (inode := int(target[8:-1])) in by_inode:
                holders[by_inode[inode]] = (pid, int(entry.name))
    return holders


def tcp_nodelay(pid: int, fd: int) -> int:
    """Return TCP_NODELAY of descriptor `fd` of process `pid` (skip the test where the kernel refuses to copy it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(_SYS_PIDFD_OPEN, pid, 0)
    copy = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0) if pidfd >= 0 else -1
    error = ctypes.get_errno()
    if pidfd >= 0:
        os.close(pidfd)
    if copy < 0:
        if error in (errno.ENOSYS, errno.EPERM):
            pytest.skip(f"this kernel does not let a test read another process's socket: {os.strerror(error)}")
        raise OSError(error, os.strerror(error))
    with socket.socket(fileno=copy) as sock:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
