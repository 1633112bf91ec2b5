"""A listening unix socket only its owner can connect to (mode 0600), bound afresh at a path in a
private runtime dir: the doors of a session (exec agent, gateway, report channel)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def listen(path: Path, backlog: int = 128) -> socket.socket:
    """Remove what is at `path`, bind a new socket there (0600) and listen."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(backlog)
    return sock
