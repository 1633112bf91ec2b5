"""Serve git's transport over posture's own pinned paramiko connection (see gitssh.py).

`Relay` listens on a unix socket in a private directory; each connection from
gitssh.py names the git service and path git wants. Only git-receive-pack and
git-upload-pack of the one repository this relay was opened for are run; anything
else is refused. Remote git runs with hooks and fsmonitor switched off.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import socket
import struct
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .ssh import CONNECT_TIMEOUT, remote_command

SERVICES = ("git-receive-pack", "git-upload-pack")
REMOTE_GIT = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "gc.auto=0"]
REMOTE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PROTOCOL = re.compile(r"^version=[0-9]$")


def _unquote_git_path(text: str) -> str:
    # git quotes the path for the shell with single quotes: '...' with '\'' for a quote.
    words = shlex.split(text)
    return words[0] if len(words) == 1 else ""


def remote_service(service: str, bare: str, git_protocol: str = "") -> str:
    """The remote command for `service` on the bare repository `bare` (created on first push)."""
    sub = service.removeprefix("git-")
    env = {"PATH": REMOTE_PATH, "LC_ALL": "C"}
    if _PROTOCOL.match(git_protocol or ""):
        env["GIT_PROTOCOL"] = git_protocol
    git = " ".join(shlex.quote(w) for w in REMOTE_GIT)
    init = ""
    if service == "git-receive-pack":
        init = 'test -d "$0" || git init --quiet --bare "$0" >/dev/null 2>&1 || exit 1; '
    script = f'{init}exec {git} {sub} "$0"'
    return remote_command(["/bin/sh", "-c", script, bare], env, None)


class Relay:
    """A unix socket that runs git's requested service over `client` for one repository."""

    def __init__(self, client, bare: str) -> None:
        self.client = client
        self.bare = bare
        # A private (0700) directory in the system temp dir: unix socket paths must stay under 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="posture-l4-"))
        self.path = str(self.dir / "git.sock")
        self.errors: list[str] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        os.chmod(self.path, 0o600)
        self._server.listen(4)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        """Environment for a local git command that should talk through this relay."""
        here = Path(__file__).with_name("gitssh.py")
        return {
            "GIT_SSH_COMMAND": f"{shlex.quote(sys.executable)} -I -S {shlex.quote(str(here))}",
            "GIT_SSH_VARIANT": "ssh",
            "POSTURE_L4_RELAY": self.path,
            "SSH_AUTH_SOCK": "",
        }

    def close(self) -> None:
        """Stop listening and remove the socket."""
        try:
            self._server.close()
        finally:
            for p in (self.path,):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            try:
                self.dir.rmdir()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._serve_one(conn)
        except Exception as exc:  # noqa: BLE001 - reported by the caller through self.errors
            self.errors.append(f"{exc.__class__.__name__}: {exc}")
            try:
                conn.sendall(struct.pack(">BI", 3, 3) + b"255")
            except OSError:
                pass
        finally:
            conn.close()

    def _serve_one(self, conn: socket.socket) -> None:
        # read in blocks, not byte by byte: each recv gives the GIL away, and with the SSH
        # transport's thread running, getting it back can take milliseconds every time
        header = b""
        while b"\n" not in header:
            chunk = conn.recv(65536)
            if not chunk:
                return
            header += chunk
            if len(header) > 65536 + 4096:
                raise ValueError("header too long")
        header, _, first = header.partition(b"\n")
        request = json.loads(header)
        argv = [str(a) for a in request.get("argv", [])]
        wanted = argv[-1] if argv else ""
        service, _, rest = wanted.partition(" ")
        path = _unquote_git_path(rest)
        if service not in SERVICES or path.rstrip("/") != self.bare.rstrip("/"):
            message = f"posture: refused remote command {wanted!r} (only {' / '.join(SERVICES)} of {self.bare})\n".encode()
            conn.sendall(struct.pack(">BI", 2, len(message)) + message + struct.pack(">BI", 3, 3) + b"128")
            self.errors.append(message.decode().strip())
            return
        chan = self.client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
        chan.exec_command(remote_service(service, self.bare, str(request.get("git_protocol") or "")))
        up = threading.Thread(target=self._upstream, args=(conn, chan, first), daemon=True)
        up.start()
        stderr = bytearray()
        while True:
            if chan.recv_ready():
                data = chan.recv(65536)
                conn.sendall(struct.pack(">BI", 1, len(data)) + data)
            elif chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                stderr += data
                conn.sendall(struct.pack(">BI", 2, len(data)) + data)
            elif chan.exit_status_ready() and (chan.eof_received or chan.closed):
                break
            else:
                select.select([chan], [], [], 1.0)
        code = chan.recv_exit_status()
        chan.close()
        if code != 0:
            self.errors.append(f"{service} exited {code}: {stderr.decode(errors='replace').strip()[-300:]}")
        text = str(255 if code < 0 else code).encode()
        conn.sendall(struct.pack(">BI", 3, len(text)) + text)

    @staticmethod
    def _upstream(conn: socket.socket, chan, first: bytes = b"") -> None:
        try:
            if first:
                chan.sendall(first)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                chan.sendall(data)
        except OSError:
            pass
        try:
            chan.shutdown_write()
        except Exception:  # noqa: BLE001 - the channel may already be closed
            pass


@contextmanager
def relay(client, bare: str) -> Iterator[Relay]:
    """A Relay for `bare` over `client`, closed afterwards."""
    r = Relay(client, bare)
    try:
        yield r
    finally:
        r.close()
