"""WORKERS > 1: the supervisor's dealer, which accepts every connection and hands it to a worker.

Workers that accepted on the shared listening socket themselves could leave all of a burst of keep-alive
connections on one of them: the event loop that wakes first accepts every connection waiting (asyncio
and uvloop accept until the backlog is empty), and a keep-alive connection never moves. A socket per
worker with SO_REUSEPORT spreads them by a hash, unevenly once in about forty bursts of 32, and resets
the connections queued on a worker that stops. So one thread of the supervisor (which loads no model)
accepts, sets TCP_NODELAY, and sends each connection over a Unix socket (SCM_RIGHTS) to the open worker
that holds the fewest (ties in turn): app.ops.intake serves it there. A worker opens once it serves (a
replacement once its model is loaded: app.ops.lifecycle) and closes when it stops taking connections
or dies; while none is open, connections wait in the listening socket's backlog.

Threads and forks: the thread owns its state; the supervisor's main thread asks it through a queue. A
worker is forked while the thread holds no accepted connection (`forking`), and the new worker closes
every descriptor of the dealer's (`close_in_child`): a copy of a connection or of another worker's
channel left in a worker would keep it open after its owner closed it.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

log = logging.getLogger("app.ops.dealer")

# The channel's messages, one per SOCK_SEQPACKET record. Dealer to worker: HAND with up to MAX_FDS
# connections. Worker to dealer: OPEN (it takes connections), CLOSE (it takes no more: the dealer shuts its
# end, and the worker takes what was sent before, then closes the channel), and REPORT with two running
# totals, the connections it has taken and those it has closed (totals, so that the next report makes good
# one that a full buffer lost). A worker reports what it took before it reads a byte from them: until then
# the dealer keeps its own copy, and hands a connection again if the worker dies before it took it.
HAND = b"c"
OPEN = b"open"
CLOSE = b"close"
REPORT = b"took "
MAX_FDS = 64
# How soon connections that no worker could take are handed again (a channel was full).
RETRY_S = 0.01
# After the process ran out of descriptors, how long to leave the backlog alone before accepting again.
ACCEPT_RETRY_S = 0.1
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def report(taken: int, closed: int) -> bytes:
    """Return a worker's REPORT: how many connections it has taken, and closed, since it started."""
    return REPORT + b"%d %d" % (taken, closed)


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """Return the two ends of a worker's channel, non-blocking: the dealer's, then the worker's."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours, theirs


@dataclass(slots=True)
class _Worker:
    channel: socket.socket
    open: bool = False
    handed: int = 0
    taken: int = 0
    closed: int = 0
    # Sent, not yet taken: this process's copies, oldest first.
    untaken: deque[socket.socket] = field(default_factory=deque)

    @property
    def held(self) -> int:
        return self.handed - self.closed

    def took(self, taken: int, closed: int) -> None:
        while self.taken < taken and self.untaken:
            self.untaken.popleft().close()
            self.taken += 1
        self.closed = closed


class Dealer:
    """Accept on the pod's listening sockets in a thread; hand each connection to a worker."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._selector = selectors.DefaultSelector()
        self._listeners: list[socket.socket] = []
        self._listening = False
        self._workers: dict[int, _Worker] = {}
        self._turn = 0
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._quiet = threading.Lock()  # held by the thread while it acts; a fork waits for it
        self._pending: tuple[socket.socket, socket.socket] | None = None
        self._adopted: list[socket.socket] = []  # channels adopted, not yet added by the thread
        self._waiting: list[socket.socket] = []  # accepted, or handed to a worker that died: for the next one
        self._thread = threading.Thread(target=self._run, name="dealer", daemon=True)
        self._stopped = False

    # --- the supervisor's main thread -----------------------------------------------------------------

    def start(self, listeners: Iterable[socket.socket]) -> None:
        """Take a copy of each listening socket and start the thread (before the first worker is forked)."""
        for listener in listeners:
            copy = listener.dup()
            copy.setblocking(False)
            self._listeners.append(copy)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._run_commands)
        self._thread.start()

    def channel_for_fork(self) -> socket.socket:
        """Make the channel of the worker about to be forked; return its end (`adopt` keeps the other)."""
        self._pending = channel_pair()
        return self._pending[1]

    @contextmanager
    def forking(self) -> Iterator[None]:
        """Hold the thread still (no connection in this process) while a worker is forked."""
        with self._quiet:
            try:
                yield
            finally:
                if self._pending is not None and os.getpid() == self._pid:  # the fork failed
                    for end in self._pending:
                        end.close()
                    self._pending = None

    def adopt(self, pid: int) -> None:
        """Keep the channel of worker `pid`, just forked (inside `forking`); the worker opens it once it serves."""
        assert self._pending is not None
        ours, theirs = self._pending
        self._pending = None
        theirs.close()
        self._adopted.append(ours)  # the thread is held still (`forking`) or not started
        self._ask(lambda: self._add(pid, ours))

    def forget(self, pid: int) -> None:
        """Hand nothing more to worker `pid`, which exited."""
        self._ask(lambda: self._forget(pid))

    def close_in_child(self) -> None:
        """In a new worker: close every descriptor of the dealer's, its own channel end excepted."""
        for sock in self._sockets():
            sock.close()
        if self._pending is not None:
            self._pending[0].close()
            self._pending = None
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def close(self) -> None:
        """Stop the thread, then close the listening sockets and every channel (the pod has stopped)."""
        if self._thread.is_alive():
            self._ask(self._stop)
            self._thread.join(5)
        for sock in self._sockets():
            sock.close()

    def _sockets(self) -> list[socket.socket]:
        held = [sock for w in self._workers.values() for sock in (w.channel, *w.untaken)]
        return [*self._listeners, *held, *self._waiting, *self._adopted]

    def _ask(self, command: Callable[[], None]) -> None:
        self._commands.put(command)
        os.write(self._wake_w, b"!")

    # --- the thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped:
            events = self._selector.select(RETRY_S if self._waiting else None)
            # Reports first: a worker's count of closed connections makes the next choice exact.
            events.sort(key=lambda event: event[0].data == self._accept)
            with self._quiet:
                for key, _ in events:
                    try:
                        key.data(key.fileobj)
                    except Exception:
                        log.exception("the dealer failed to act on %s", key.fileobj)
                if self._waiting:
                    waiting, self._waiting = self._waiting, []
                    self._hand(waiting)

    def _run_commands(self, _: object) -> None:
        while True:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                break
        while not self._commands.empty():
            self._commands.get()()

    def _stop(self) -> None:
        self._stopped = True

    def _add(self, pid: int, channel: socket.socket) -> None:
        self._adopted.remove(channel)
        self._workers[pid] = _Worker(channel)
        self._selector.register(channel, selectors.EVENT_READ, self._read)

    def _forget(self, pid: int) -> None:
        worker = self._workers.get(pid)
        if worker is not None:  # it exited: read its last reports first (then the channel's end drops it)
            self._read(worker.channel)
            self._drop(pid)

    def _drop(self, pid: int) -> None:
        worker = self._workers.pop(pid, None)
        if worker is None:
            return
        self._selector.unregister(worker.channel)
        worker.channel.close()
        self._listen()
        if worker.untaken:  # it died before it took them: no byte of theirs was read
            log.info("handing %d connection(s) of worker %d again", len(worker.untaken), pid, extra={"pid": pid})
            self._waiting.extend(worker.untaken)

    def _read(self, channel: socket.socket) -> None:
        pid, worker = next((p, w) for p, w in self._workers.items() if w.channel is channel)
        while True:
            try:
                message = channel.recv(64)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:  # the worker took what was sent and closed the channel, or it died
                self._drop(pid)
                return
            if message.startswith(REPORT):
                taken, closed = message[len(REPORT) :].split()
                worker.took(int(taken), int(closed))
            elif message == OPEN:
                worker.open = True
                log.debug("worker %d takes connections", pid, extra={"pid": pid})
                self._listen()
            elif message == CLOSE:
                worker.open = False
                self._listen()
                with suppress(OSError):  # it died meanwhile: its end of the channel says so next
                    channel.shutdown(socket.SHUT_WR)

    def _listen(self) -> None:
        """Accept while some worker takes connections; otherwise leave them in the backlog."""
        wanted = any(w.open for w in self._workers.values())
        if wanted == self._listening:
            return
        for listener in self._listeners:
            if wanted:
                self._selector.register(listener, selectors.EVENT_READ, self._accept)
            else:
                self._selector.unregister(listener)
        self._listening = wanted

    def _accept(self, listener: socket.socket) -> None:
        accepted = []
        for _ in range(MAX_FDS):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    continue  # e.g. the client reset it while it waited
                log.error("cannot accept a connection: %s; retrying in %gs", exc.strerror, ACCEPT_RETRY_S)
                time.sleep(ACCEPT_RETRY_S)
                break
            accepted.append(conn)
            # Whatever event loop the worker runs: a response written in pieces must not wait for an ACK.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._hand(accepted)

    def _hand(self, conns: list[socket.socket]) -> None:
        """Send each connection to a worker, which keeps it until the worker took it; keep those none takes now."""
        refused: set[int] = set()
        while conns:
            batches: dict[int, list[socket.socket]] = {}
            for index, conn in enumerate(conns):
                pid = self._choose(refused)
                if pid is None:  # every worker is closed or its channel full: the next event tries again
                    self._waiting.extend(conns[index:])
                    break
                batches.setdefault(pid, []).append(conn)
                self._workers[pid].handed += 1
            conns = []
            for pid, batch in batches.items():
                if not self._send(pid, batch):
                    refused.add(pid)
                    conns.extend(batch)

    def _choose(self, refused: set[int]) -> int | None:
        pids = [p for p, w in self._workers.items() if w.open and p not in refused]
        if not pids:
            return None
        self._turn = (self._turn + 1) % len(pids)
        in_turn = pids[self._turn :] + pids[: self._turn]
        return min(in_turn, key=lambda p: self._workers[p].held)

    def _send(self, pid: int, batch: list[socket.socket]) -> bool:
        worker = self._workers[pid]
        try:
            socket.send_fds(worker.channel, [HAND], [conn.fileno() for conn in batch])
        except OSError as exc:
            worker.handed -= len(batch)
            if not isinstance(exc, BlockingIOError):  # it died: its channel's end will say so
                worker.open = False
            log.warning("worker %d took no connections: %s", pid, exc, extra={"pid": pid})
            return False
        worker.untaken.extend(batch)
        return True
