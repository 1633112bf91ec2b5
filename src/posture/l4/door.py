"""The L4 door to the session's gateway: a remote port forward on posture's own SSH connection.

The host listens on its own 127.0.0.1:PORT (sshd's tcpip-forward, requested by this
connection, gone with it); every connection there comes back over the pinned connection and
is joined to the gateway's unix socket on the user's machine. The host holds no agent
credential: only the session's sentinels, worthless without this connection.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

CHUNK = 65536


def open_door(transport: Any, gateway_socket: str) -> int:
    """Ask the host to forward its 127.0.0.1:<free port> to `gateway_socket`; return the port."""

    def accept(channel: Any, origin: tuple[str, int], server: tuple[str, int]) -> None:
        threading.Thread(target=_join, args=(channel, gateway_socket), daemon=True).start()

    return int(transport.request_port_forward("127.0.0.1", 0, handler=accept))


def _join(channel: Any, path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        channel.close()
        sock.close()
        return
    back = threading.Thread(target=_to_channel, args=(sock, channel), daemon=True)
    back.start()
    try:
        while True:
            data = channel.recv(CHUNK)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    back.join()
    channel.close()
    sock.close()


def _to_channel(sock: socket.socket, channel: Any) -> None:
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            channel.sendall(data)
        channel.shutdown_write()
    except OSError:
        pass
