"""Starting a session's gateway with the session, and stopping it with the session.

The session's backend calls `start` from the process that holds the session (the keeper, or
`posture exec`); the gateway's socket lives in the session's private runtime directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import unixsock
from .broker import Brokered

SOCKET_NAME = "gateway.sock"
MARK = "posture.gateway"  # an argument of its own on the gateway's command line (how `stop` knows it)
# -I -S: no site, no user paths (a faster start); the package's own directory on sys.path instead.
BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from posture.gateway.service import main; sys.exit(main())"


@dataclass
class Running:
    """A started gateway: its process and its socket on the host."""

    proc: subprocess.Popen
    socket: str

    def facts(self) -> dict[str, Any]:
        """What the session record keeps (for a `down` from another process)."""
        return {"gateway_pid": self.proc.pid, "gateway_socket": self.socket}


def listen(runtime: Path) -> socket.socket:
    """Bind the gateway's socket (0600, in the private runtime dir)."""
    return unixsock.listen(runtime / SOCKET_NAME)


def start(brokered: Brokered, runtime: Path, session: str, listener: socket.socket | None = None,
          egress: dict[str, Any] | None = None) -> Running:
    """Start the gateway process for `brokered` (not waiting for it: connections queue on the socket);
    `egress` (egressdoor.plan) makes it also the session's forward proxy (modes allowlist and none)."""
    from .. import audit

    sock = listener or listen(runtime)
    where = sock.getsockname()
    path = where if isinstance(where, str) else f"{where[0]}:{where[1]}"
    log = open(runtime / "gateway.log", "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", BOOT, str(Path(__file__).resolve().parent.parent.parent), MARK, str(sock.fileno())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
            pass_fds=(sock.fileno(),), close_fds=True, start_new_session=True,
        )
    finally:
        log.close()
    plan = {**brokered.plan(), "listen_fd": sock.fileno(), **({"egress": egress} if egress else {})}
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(plan).encode() + b"\n")
    proc.stdin.flush()  # stdin stays open: its EOF tells the gateway that this process is gone
    sock.close()
    audit.record("gateway.start", session=session, pid=proc.pid, upstream=brokered.upstream, credentials=brokered.given(),
                 missing=brokered.missing)
    return Running(proc, path)


def stop(running: Running | None, facts: dict[str, Any]) -> None:
    """Stop the gateway (this process's own, or the one the record names, if it is still ours)."""
    if running is not None:
        if running.proc.poll() is None:
            running.proc.kill()
        running.proc.wait()
        if running.proc.stdin is not None:
            running.proc.stdin.close()
    elif facts.get("gateway_pid"):
        pid = int(facts["gateway_pid"])
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            if MARK.encode() in argv and os.stat(f"/proc/{pid}").st_uid == os.getuid():
                os.kill(pid, 9)
        except OSError:
            pass
    path = facts.get("gateway_socket")
    if path and path.startswith("/"):
        try:
            os.unlink(path)
        except OSError:
            pass
