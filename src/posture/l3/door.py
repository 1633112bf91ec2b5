"""The L3 guest's one door to its session's gateway: a virtio-serial port carrying TCP connections.

The guest end (guest/tunnel.py under the view's python3, started by the guest's init
before the exec agent, as `nobody`) listens on the guest's own 127.0.0.1:INSIDE_PORT,
the address the agent's base URL and proxy variables name; the host end, a thread of the
process that holds the VM, joins every connection to the gateway's unix socket and to
nothing else. So the guest reaches the gateway without any network toward the host (in
modes allowlist and none it has no network interface at all), and the gateway stays a
process outside the VM that nothing in the guest can see.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from ..gateway import INSIDE_PORT
from ..guest import tunnel
from . import guestboot
from .mux import connect_port

CHANNEL_NAME = "org.posture.gateway"
READY = "/run/posture-door.ready"
NOBODY = (65534, 65534)


def guest_step(guest_dir: str, python: str) -> guestboot.Door:
    """The boot step (run as guest root before the agent starts) that starts the guest end in the new root
    and waits until it listens: a command never races its door."""
    return guestboot.Door(CHANNEL_NAME, READY, (python, "-I", "-S", f"{guest_dir}/tunnel.pyc", "--listen", f"127.0.0.1:{INSIDE_PORT}",
                                                "--uid", str(NOBODY[0]), "--gid", str(NOBODY[1]), "--ready", READY))


class HostDoor:
    """The host end: a thread joining the VM's port (QEMU's unix socket) to the gateway's socket."""

    def __init__(self, channel_socket: str, gateway_socket: str) -> None:
        self.channel_socket = channel_socket
        self.gateway_socket = gateway_socket
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC)

    def start(self, timeout: float = 10.0) -> None:
        """Connect to the port's socket (QEMU made it when the domain started) and serve in a daemon thread."""
        sock = connect_port(self.channel_socket, "gateway channel", timeout)
        self.sock = sock
        door = tunnel.Tunnel(sock.fileno(), connect=self.gateway_socket)
        self.thread = threading.Thread(target=door.run, args=(self.stop_r,), name="posture-l3-door", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving; every connection through the door closes."""
        try:
            os.write(self.stop_w, b"x")
        except OSError:
            pass
        if self.thread is not None:
            self.thread.join(timeout=2)
            self.thread = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for fd in (self.stop_r, self.stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.stop_r = self.stop_w = -1


def guest_files(cache: Path, compile_pycs) -> dict[str, tuple[Path, int]]:
    """The guest end's files for the root share's guest dir (compiled by the guest's python, cached)."""
    return {name: (path, 0o644) for name, path in compile_pycs(cache, ("tunnel.py", "wire.py")).items()}
