"""The network helper's client: the socket path, one request, one notification.

Protocol: one JSON object per line each way over a unix socket (mode 0666).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
from typing import Any

DEFAULT_SOCKET = "/run/posture/netd.sock"
PROTOCOL = 1

class NetdError(Exception):
    """The helper answered with an error (`code`: unverified, denied, failed, busy, invalid, limit)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def socket_path(settings: Any = None) -> str:
    """Where the helper listens: user config `[l2] netd_socket`, env POSTURE_NETD_SOCKET, or the default."""
    configured = None
    if settings is not None:
        configured = settings.backend.get("l2", {}).get("netd_socket")
    return configured or os.environ.get("POSTURE_NETD_SOCKET") or DEFAULT_SOCKET


def request(path: str, obj: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """Send one request, return the answer; raise OSError if unreachable, NetdError on refusal."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    buf = b""
    try:
        _connect(sock, path, timeout)
        try:
            sock.sendall(json.dumps(obj).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read the request (a limit): its answer is waiting to be read
        while not buf.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    finally:
        sock.close()
    if not buf:
        raise OSError(errno.ECONNRESET, "the network helper closed the connection")
    answer = json.loads(buf)
    if not answer.get("ok"):
        code = answer.get("code", "failed")
        error = answer.get("error", "the network helper refused")
        if code == "limit":
            error = f"the network helper refused: limit reached: {error}"
        raise NetdError(code, error)
    return answer


def _connect(sock: socket.socket, path: str, timeout: float) -> None:
    """Connect, waiting in the kernel's queue (up to `timeout`) while the helper's backlog is full."""
    sock.settimeout(None)  # a blocking connect with SO_SNDTIMEO waits its turn; a non-blocking one fails at once
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(timeout), int(timeout % 1 * 1e6)))
    try:
        sock.connect(path)
    except BlockingIOError:
        raise OSError(errno.EAGAIN, f"the network helper's backlog stayed full for {timeout:g} s") from None
    finally:
        sock.settimeout(timeout)


def notify(path: str, obj: dict[str, Any]) -> None:
    """Send one request without waiting for the answer (the helper acts on it all the same)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(2.0)
    try:
        _connect(sock, path, 2.0)
        sock.sendall(json.dumps(obj).encode() + b"\n")
    finally:
        sock.close()
