"""The supervisor's dealer (app.ops.dealer) on real sockets: a listener on 127.0.0.1, the test as its workers."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from app.ops.dealer import CLOSE, HAND, MAX_FDS, OPEN, Dealer, report

# Bounds on the waits for the dealer's thread; they only keep a broken run from hanging.
WAIT_S = 10.0
# How long a worker that should get nothing listens before the test says it got nothing.
QUIET_S = 0.3


class WorkerEnd:
    """A worker's end of its channel, driven by the test as app.ops.intake drives it."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self.taken = 0

    def say(self, message: bytes) -> None:
        self.channel.send(message)

    def receive(self, timeout: float = WAIT_S) -> tuple[bytes, list[socket.socket]] | None:
        """Return the next message and its connections, or None when none came within `timeout`."""
        if not select.select([self.channel], [], [], timeout)[0]:
            return None
        message, fds, _, _ = socket.recv_fds(self.channel, 16, MAX_FDS)
        return message, [socket.socket(fileno=fd) for fd in fds]

    def take(self, count: int, closed: int = 0) -> list[socket.socket]:
        """Receive connections until `count` came (or more, in one message); report them taken."""
        conns: list[socket.socket] = []
        while len(conns) < count:
            got = self.receive()
            assert got is not None and got[0] == HAND, f"{len(conns)} of {count} connections came"
            conns.extend(got[1])
        self.taken += len(conns)
        self.say(report(self.taken, closed))
        return conns


@contextmanager
def dealing(workers: int, opened: int) -> Iterator[tuple[Callable[[], socket.socket], list[WorkerEnd]]]:
    """Run a dealer on a listener of 127.0.0.1 with `workers` channels; yield a client maker and the workers.

    The first `opened` workers say OPEN before the dealer starts, so that it reads every OPEN before it
    accepts anything; the others open when the test says so.
    """
    with ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        dealer = Dealer()
        ends = []
        for pid in range(workers):
            # The worker's copy of its end, as a fork would leave it: adopt() closes the dealer's process's one.
            ends.append(WorkerEnd(stack.enter_context(dealer.channel_for_fork().dup())))
            dealer.adopt(1000 + pid)
            if pid < opened:
                ends[-1].say(OPEN)
        dealer.start([listener])
        stack.callback(dealer.close)

        def connect() -> socket.socket:
            return stack.enter_context(socket.create_connection(listener.getsockname(), timeout=WAIT_S))

        yield connect, ends


def test_dealer_splits_a_burst_of_32_evenly_between_two_open_workers():
    with dealing(2, opened=2) as (connect, (a, b)):
        for _ in range(32):
            connect()
        split = (len(a.take(16)), len(b.take(16)))
    assert split == (16, 16)


def test_dealer_hands_new_connections_to_the_worker_holding_fewest():
    with dealing(2, opened=2) as (connect, (a, b)):
        for _ in range(8):
            connect()
        (first, _) = (a.take(4), b.take(4))
        for conn in first:
            conn.close()
        a.say(report(a.taken, closed=4))
        for _ in range(4):
            connect()
        # All four to the worker that closed its four: had any gone to the other, this one would wait.
        assert len(a.take(4, closed=4)) == 4


def test_dealer_hands_nothing_before_a_worker_opens_then_everything_waiting():
    with dealing(1, opened=0) as (connect, (worker,)):
        for _ in range(3):
            connect()
        early = worker.receive(QUIET_S)
        worker.say(OPEN)
        assert (early, len(worker.take(3))) == (None, 3)


def test_dealer_sends_nothing_more_to_a_worker_that_closes():
    with dealing(2, opened=2) as (connect, (a, b)):
        a.say(CLOSE)
        end = a.receive()  # the dealer ends the channel once it has read CLOSE
        for _ in range(4):
            connect()
        assert (end, len(b.take(4))) == ((b"", []), 4)


def test_dealer_hands_again_the_connections_of_a_worker_that_died_before_taking_them():
    with dealing(2, opened=2) as (connect, (a, b)):
        clients = {connect().getsockname()[1] for _ in range(2)}  # one each
        kept = b.take(1)
        assert select.select([a.channel], [], [], WAIT_S)[0]  # its connection waits in its channel
        a.channel.close()  # it dies without reading it
        again = b.take(1)
        served = {conn.getpeername()[1] for conn in kept + again}
    assert served == clients


def test_dealer_keeps_the_connections_of_a_worker_that_died_for_the_next_worker_that_opens():
    with dealing(2, opened=1) as (connect, (a, b)):
        client = connect().getsockname()[1]
        assert select.select([a.channel], [], [], WAIT_S)[0]
        a.channel.close()  # it dies without taking it, while no other worker takes connections
        early = b.receive(QUIET_S)
        b.say(OPEN)
        (conn,) = b.take(1)
    assert (early, conn.getpeername()[1]) == (None, client)


def test_dealer_keeps_no_copy_of_a_connection_once_taken():
    with dealing(1, opened=1) as (connect, (worker,)):
        client = connect()
        (conn,) = worker.take(1)
        conn.close()
        # Any copy left open in the dealer would keep the connection up: the client would wait, not read EOF.
        assert client.recv(1) == b""


def test_dealer_sets_tcp_nodelay_on_every_connection():
    with dealing(1, opened=1) as (connect, (worker,)):
        for _ in range(3):
            connect()
        flags = [conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for conn in worker.take(3)]
    assert flags == [1, 1, 1]
