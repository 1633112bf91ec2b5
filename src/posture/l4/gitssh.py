"""The `ssh` that posture hands git (GIT_SSH_COMMAND) for L4 sync: a relay, not a client.

git runs `gitssh.py [-o ...] [-p PORT] HOST "git-receive-pack '/path'"`. This program
opens no connection of its own: it asks the posture process that already holds the
pinned paramiko connection (unix socket in $POSTURE_L4_RELAY) to run that command on
the host, and relays stdin to it and its output back. So git's transfer uses the same
pinned, agent-less SSH connection as everything else, and no second handshake.

Framing, posture -> here: 1-byte kind (1 stdout, 2 stderr, 3 exit status) + 4-byte
length + data. Here -> posture: one JSON header line, then stdin as raw bytes.
Standard library only; run as `python3 -I -S gitssh.py`.
"""

import json
import os
import socket
import struct
import sys
import threading


def _pump_stdin(sock: socket.socket) -> None:
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def main() -> int:
    path = os.environ.get("POSTURE_L4_RELAY")
    if not path or len(sys.argv) < 2:
        sys.stderr.write("posture gitssh: only posture runs this (POSTURE_L4_RELAY is not set)\n")
        return 255
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    header = {"argv": sys.argv[1:], "git_protocol": os.environ.get("GIT_PROTOCOL", "")}
    sock.sendall(json.dumps(header).encode() + b"\n")
    threading.Thread(target=_pump_stdin, args=(sock,), daemon=True).start()
    try:
        while True:
            kind, size = struct.unpack(">BI", _read_exact(sock, 5))
            data = _read_exact(sock, size)
            if kind == 1:
                _write(1, data)
            elif kind == 2:
                _write(2, data)
            elif kind == 3:
                return int(data.decode() or "255")
    except (EOFError, OSError):
        return 255


if __name__ == "__main__":
    sys.exit(main())
