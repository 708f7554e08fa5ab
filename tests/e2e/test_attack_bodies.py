"""Attack suite, request bodies: what a body costs before its sender is authenticated.

Bodies are read by the endpoints after the header checks, counted, timed (REQUEST_BODY_TIMEOUT_S) and
charged to one budget per process (MAX_BUFFERED_REQUEST_BYTES); an early answer drops the rest of
the body unread into memory. Raw sockets, so that a body can stall halfway.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from clip_client.signing import signed_headers, text_payload_id

from scripts.procs import app_server
from tests.support.api import SECRET
from tests.support.data import TINY_APP_ENV, tiny_settings
from tests.support.service import RunningService, run_service

MIB = 1 << 20
TEXT_PATH = "/v1/embed/text"
TIMEOUT_S = 10.0  # REQUEST_BODY_TIMEOUT_S of the `python -m app` here: it reads 8 x 30 MiB first
IN_PROCESS_TIMEOUT_S = 5.0  # ... and of the in-process one: long enough to hold a body while a test runs
# How long a test waits for an answer that should come within TIMEOUT_S: generous, for a loaded machine.
ANSWER_WAIT_S = 30.0


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def head(path: str, length: int, headers: dict[str, str], *, chunked: bool = False) -> bytes:
    """Return a POST's request line and headers, declaring `length` bytes (or chunked)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def well_formed(secret: str = "not-the-secret-0123456789") -> dict[str, str]:
    """Signature headers that pass every check made before the body (format, window), signed with `secret`."""
    return signed_headers(secret, "POST", TEXT_PATH, text_payload_id("x"))


class Answer:
    """An HTTP answer read off a raw socket: status, lower-cased headers, JSON body and its error code."""

    def __init__(self, sock: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                raise ConnectionError(f"the server closed without an answer (got {data[:80]!r})")
            data += piece
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(self.headers["content-length"])
        while len(rest) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            rest += piece
        self.body = json.loads(rest[:length])
        self.code = self.body["error"]["code"] if isinstance(self.body, dict) and "error" in self.body else None
        # `close`: uvicorn closes the connection once this answer is sent; else it may carry the next request.
        self.connection = self.headers.get("connection", "keep-alive")


def health_on(sock: socket.socket) -> int:
    """Send GET /health on a connection already used; return its status (the connection was kept)."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return Answer(sock).status


def connect(port: int, timeout: float = ANSWER_WAIT_S) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


# --- memory: a stalled body without a valid signature, in a `python -m app` of its own -------------


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def stall(port: int, headers: dict[str, str], sent: int, declared: int) -> Answer:
    """Declare `declared` bytes, send `sent` of them, stall, and read the answer."""
    with connect(port) as sock:
        sock.sendall(head(TEXT_PATH, declared, headers) + b"a" * sent)
        return Answer(sock)


@pytest.fixture(scope="module")
def app_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """`python -m app` with a short body deadline; large blocks go back to the OS when freed, so RSS is live memory."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc to read the server's memory")
    env = TINY_APP_ENV | {"REQUEST_BODY_TIMEOUT_S": str(TIMEOUT_S), "MALLOC_MMAP_THRESHOLD_": "65536"}
    log = tmp_path_factory.mktemp("bodies") / "server.log"
    with app_server(env, log=log) as (process, base):
        yield process.pid, port_of(base)


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_auth_headers"), ({"X-Timestamp": "1", "X-Signature": "garbage"}, "malformed_auth_headers")],
    ids=["unsigned", "garbage-signature"],
)
def test_stalled_30_mib_bodies_without_a_valid_signature_cost_no_more_than_their_headers(app_process, headers, code):
    pid, port = app_process
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
    before = rss_kib(pid)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: stall(port, headers, 30 * MIB, 32 * MIB), range(8)))
    added_mib = (rss_kib(pid, "VmHWM") - before) / 1024
    # 8 x 30 MiB were sent: each was dropped as it came, and the deadline closed the connection.
    assert [(a.status, a.code, a.connection) for a in answers] == [(401, code, "close")] * 8
    assert added_mib < 24, f"the stalled bodies added {added_mib:.0f} MiB"


# --- time, size and budget, in-process ------------------------------------------------------------

BUDGET = 256 * 1024
LIMIT = 192 * 1024


@pytest.fixture(scope="module")
def bounded() -> Iterator[RunningService]:
    settings = tiny_settings(
        max_request_bytes=LIMIT, max_buffered_request_bytes=BUDGET, request_body_timeout_s=IN_PROCESS_TIMEOUT_S
    )
    with run_service(settings) as running:
        yield running


def test_slow_body_gets_408_within_the_deadline_and_the_connection_closes(bounded):
    with connect(port_of(bounded.base)) as sock:
        started = time.monotonic()
        sock.sendall(head(TEXT_PATH, 1000, well_formed()) + b'{"text": "')
        answer = Answer(sock)
    assert (answer.status, answer.code, answer.connection) == (408, "request_timeout", "close")
    assert answer.body["error"]["message"] == (
        f"the request body did not arrive within {IN_PROCESS_TIMEOUT_S:g} s (REQUEST_BODY_TIMEOUT_S): 10 bytes came"
    )
    assert time.monotonic() - started < ANSWER_WAIT_S


def test_body_over_the_budget_gets_503_before_it_is_read_until_the_holder_is_answered(bounded):
    port = port_of(bounded.base)
    text = "a" * 100
    valid = json.dumps({"text": text}).encode()
    signed = signed_headers(SECRET, "POST", TEXT_PATH, text_payload_id(text))
    with connect(port) as holder:
        # Holds 150 KiB of the 256 KiB budget while it stalls (a well-formed signature: the body is read).
        holder.sendall(head(TEXT_PATH, LIMIT, well_formed()) + b" " * (150 * 1024))
        deadline = time.monotonic() + ANSWER_WAIT_S
        while True:
            # Declares 150 KiB: that does not fit beside the holder, so none of it is kept.
            with connect(port) as sock:
                sock.sendall(head(TEXT_PATH, 150 * 1024, well_formed()) + b" " * (150 * 1024))
                refused = Answer(sock)
                kept = health_on(sock)  # the body was taken and dropped: the connection goes on
            if refused.status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the holder's bytes were not all read yet
        held = Answer(holder)
    with connect(port) as sock:
        sock.sendall(head(TEXT_PATH, len(valid), signed) + valid)
        later = Answer(sock)
    assert (refused.status, refused.code, refused.headers["retry-after"], refused.connection, kept) == (
        503,
        "overloaded",
        "1",
        "keep-alive",
        200,
    )
    assert refused.body["error"]["message"] == (
        "the server holds too many request bodies at once (MAX_BUFFERED_REQUEST_BYTES); retry shortly"
    )
    assert (held.status, later.status, later.body["dim"]) == (408, 200, 64)


def test_json_that_could_never_be_parsed_within_the_budget_is_413(bounded):
    # One character past U+FFFF: the whole string takes four bytes a character once parsed.
    text = "a" * (100 * 1024) + "\U0001f600"
    body = json.dumps({"text": text}, ensure_ascii=False).encode()
    headers = signed_headers(SECRET, "POST", TEXT_PATH, text_payload_id(text))
    with connect(port_of(bounded.base)) as sock:
        sock.sendall(head(TEXT_PATH, len(body), headers) + body)
        answer = Answer(sock)
    assert (answer.status, answer.code, answer.connection) == (413, "request_too_large", "keep-alive")
    assert answer.body["error"]["message"] == (
        f"parsing this body may take {6 * len(body)} bytes, over MAX_BUFFERED_REQUEST_BYTES={BUDGET}: send a "
        "smaller body, or percent-encode non-ASCII characters in URLs"
    )


def test_chunked_body_over_the_limit_is_413_and_the_connection_closes(bounded):
    with connect(port_of(bounded.base)) as sock:
        sock.sendall(head(TEXT_PATH, 0, well_formed(), chunked=True))
        piece = b" " * 65536
        for _ in range(4):  # 256 KiB > LIMIT
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        answer = Answer(sock)
    assert (answer.status, answer.code, answer.connection) == (413, "request_too_large", "close")


def test_early_refusal_of_a_whole_body_keeps_the_connection_for_the_next_request(bounded):
    # A caller sends its whole body before it reads: it gets the 401, and the connection stays usable.
    with connect(port_of(bounded.base)) as sock:
        sock.sendall(head(TEXT_PATH, 100 * 1024, {}) + b" " * (100 * 1024))
        refused = Answer(sock)
        kept = health_on(sock)
    assert (refused.status, refused.code, refused.connection, kept) == (401, "missing_auth_headers", "keep-alive", 200)


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        (TEXT_PATH, {}, "missing_auth_headers"),
        (TEXT_PATH, {"X-Timestamp": "1", "X-Signature": "0" * 64}, "timestamp_out_of_window"),
        (TEXT_PATH, {"X-Timestamp": "now", "X-Signature": "0" * 64, "X-Nonce": "short"}, "malformed_auth_headers"),
        ("/v1/embeddings", {"Authorization": "Bearer sk-not-a-key"}, "api_key_invalid"),
    ],
    ids=["unsigned", "stale", "malformed-nonce", "unknown-api-key"],
)
def test_checks_that_need_no_body_answer_before_it_is_asked_for(bounded, path, headers, code):
    # A caller that waits for "100 Continue" sends its body only when the server reads it: it never does.
    headers = {k: str(int(time.time())) if v == "now" else v for k, v in headers.items()}
    with connect(port_of(bounded.base)) as sock:
        sock.sendall(head(path, 100 * 1024, headers | {"Expect": "100-continue"}))
        answer = Answer(sock)
    assert (answer.status, answer.code, answer.connection) == (401, code, "close")
