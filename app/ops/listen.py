"""Check up front that HOST:PORT can be listened on, before a model loads or a worker starts."""

from __future__ import annotations

import errno
import socket

from app.ops.exits import ExitCode, StartupError


def check_port(host: str, port: int) -> None:
    """Raise StartupError (exit 3) with what to change when `host`:`port` cannot be bound right now.

    The socket is bound as uvicorn and gunicorn bind theirs (SO_REUSEADDR), then closed: they bind it again.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(_why(where, port, exc), ExitCode.PORT_UNAVAILABLE) from None


def _why(where: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: another process listens there; stop it, or set PORT to a free port"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (port {port} needs privileges); set PORT above 1023"
    return f"cannot listen on {where}: {exc.strerror or exc}; check HOST and PORT"
