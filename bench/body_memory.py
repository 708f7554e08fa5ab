"""What an unauthenticated request body costs the server: peak RSS over body size, and stalled bodies.

Starts `python -m app` on the tiny model (random weights) and sends requests whose signature headers
are well formed and current but signed with the wrong secret, so each one is refused 401 after the
body is read. For each body kind it resets the server's peak RSS (/proc/PID/clear_refs), sends one
body of `--mib` MiB, and reads the peak back: `amplification` is (peak RSS - RSS before) / body size.
Then `--stalled` connections each declare `--mib` + 1 MiB, send `--mib` MiB and stall; it prints the
RSS they added and how many the server closed within `--stall-s` seconds.

Usage: python -m bench.body_memory [--mib 31] [--stalled 24] [--stall-s 20] [--json]
Linux only (/proc); the server runs with MALLOC_MMAP_THRESHOLD_=65536, so that each body's memory is
returned when freed and every case's peak is its own. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from clip_client.signing import signed_headers

from scripts.procs import app_server

WRONG_SECRET = "not-the-server-secret-0123456789abcdef"
SERVER_SECRET = "bench-body-memory-secret-0123456789abcdef"
MIB = 1 << 20
EMOJI = "\U0001f600"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Return a /proc/PID/status memory field in KiB (VmRSS now, VmHWM the peak since the last reset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _json(payload: dict[str, object]) -> tuple[bytes, str]:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json"


def _text(size: int, emoji: bool) -> str:
    return "a" * (size - 64) + (EMOJI if emoji else "")


def _data_uri(size: int) -> str:
    return "data:image/png;base64," + base64.b64encode(b"\0" * (size * 3 // 4 - 64)).decode("ascii")


def _multipart(size: int) -> tuple[bytes, str]:
    boundary = "bench-boundary-7d1f"
    part = os.urandom(size - 256)
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
    head += "Content-Type: image/jpeg\r\n\r\n"
    body = head.encode() + part + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# name -> (path, body factory of about `size` bytes)
CASES: dict[str, tuple[str, Callable[[int], tuple[bytes, str]]]] = {
    "text, ASCII": ("/v1/embed/text", lambda n: _json({"text": _text(n, False)})),
    "text, one emoji": ("/v1/embed/text", lambda n: _json({"text": _text(n, True)})),
    "image, data URI": ("/v1/embed/image", lambda n: _json({"image_url": _data_uri(n)})),
    "image-batch, 4 data URIs": ("/v1/embed/image-batch", lambda n: _json({"image_urls": [_data_uri(n // 4)] * 4})),
    "image URL, one emoji": ("/v1/embed/image", lambda n: _json({"image_url": "https://x/" + _text(n, True)})),
    "embeddings, ASCII": ("/v1/embeddings", lambda n: _json({"model": "clip-tiny", "input": _text(n, False)})),
    "embeddings, one emoji": ("/v1/embeddings", lambda n: _json({"model": "clip-tiny", "input": _text(n, True)})),
    "upload, multipart": ("/v1/embed/image-upload", _multipart),
}


def request_head(path: str, length: int, content_type: str) -> bytes:
    """Return the request line and headers of a POST signed with the wrong secret (well formed, current)."""
    headers = signed_headers(WRONG_SECRET, "POST", path, "0" * 64)
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(sock: socket.socket) -> int:
    """Return the status of the answer on `sock` (its first line), or 0 when the connection ends first."""
    data = b""
    while b"\r\n" not in data:
        piece = sock.recv(4096)
        if not piece:
            return 0
        data += piece
    return int(data.split(b" ", 2)[1])


def one_body(pid: int, port: int, path: str, body: bytes, content_type: str) -> tuple[int, float]:
    """Send one body; return the answer's status and the peak RSS it added, in MiB."""
    time.sleep(0.5)  # let the previous request's memory go back
    before = rss_kib(pid)
    reset_peak(pid)
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        try:
            sock.sendall(request_head(path, len(body), content_type) + body)
        except OSError:
            pass  # the server may answer and close before the whole body is sent
        status = status_of(sock)
    return status, (rss_kib(pid, "VmHWM") - before) / 1024


def stalled(pid: int, port: int, count: int, size: int, stall_s: float) -> dict[str, object]:
    """Open `count` connections that declare size + 1 MiB, send `size` bytes and stall; return what they cost."""
    time.sleep(0.5)
    before = rss_kib(pid)
    reset_peak(pid)
    started = time.monotonic()
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        sock.sendall(request_head("/v1/embed/text", size + MIB, "application/json"))
        socks.append(sock)
    chunk = b"a" * MIB
    sent, answers = [0] * count, [b""] * count
    closed_after: list[float | None] = [None] * count
    while time.monotonic() - started < stall_s and None in closed_after:
        for i, sock in enumerate(socks):
            if closed_after[i] is not None:
                continue
            try:
                if sent[i] < size:
                    sent[i] += sock.send(chunk[: size - sent[i]])
                piece = sock.recv(65536)
                if piece:
                    answers[i] += piece
                else:
                    closed_after[i] = time.monotonic() - started
            except BlockingIOError:
                pass
            except OSError:
                closed_after[i] = time.monotonic() - started
        time.sleep(0.01)
    peak = (rss_kib(pid, "VmHWM") - before) / 1024
    for sock in socks:
        sock.close()
    statuses: dict[str, int] = {}
    for answer in answers:
        status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "none"
        statuses[status] = statuses.get(status, 0) + 1
    closed = [t for t in closed_after if t is not None]
    return {
        "connections": count,
        "mib_sent_each": round(sum(sent) / count / MIB, 1),
        "peak_rss_added_mib": round(peak),
        "answers": statuses,
        "closed_by_server": len(closed),
        "last_closed_after_s": round(max(closed), 1) if closed else None,
        "held_s": stall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=31, help="body size in MiB (default 31)")
    parser.add_argument("--stalled", type=int, default=24, help="stalled connections (default 24; 0 skips)")
    parser.add_argument("--stall-s", type=float, default=20.0, help="seconds to hold them (default 20)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    env = {
        "EMBEDDING_HMAC_SECRET": SERVER_SECRET,
        "CLIP_MODEL": "clip-tiny",
        "CLIP_PRETRAINED": "none",
        "DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "warning",
        # Every large block straight from and back to the OS: glibc's sliding threshold would otherwise
        # keep a freed body in the heap, and the next body's peak would reuse it unseen.
        "MALLOC_MMAP_THRESHOLD_": "65536",
    }
    size = args.mib * MIB
    results: dict[str, object] = {"body_mib": args.mib}
    with tempfile.TemporaryDirectory() as tmp, app_server(env, log=Path(tmp) / "server.log") as (process, base):
        port = int(base.rsplit(":", 1)[1])
        results["idle_rss_mib"] = round(rss_kib(process.pid) / 1024)
        for name, (path, make) in CASES.items():
            body, content_type = make(size)
            status, peak = one_body(process.pid, port, path, body, content_type)
            results[name] = {
                "status": status,
                "peak_mib": round(peak),
                "amplification": round(peak * MIB / len(body), 2),
            }
            del body
        if args.stalled:
            results["stalled"] = stalled(process.pid, port, args.stalled, size, args.stall_s)
    if args.json:
        print(json.dumps(results))
        return
    print(f"server idle RSS {results['idle_rss_mib']} MiB; bodies of {args.mib} MiB, wrong signature")
    print(f"{'body':<28} {'status':>6} {'peak MiB':>9} {'x body':>7}")
    for name in CASES:
        row = results[name]
        assert isinstance(row, dict)
        print(f"{name:<28} {row['status']:>6} {row['peak_mib']:>9} {row['amplification']:>7}")
    if "stalled" in results:
        print("stalled:", json.dumps(results["stalled"]))


if __name__ == "__main__":
    main()
