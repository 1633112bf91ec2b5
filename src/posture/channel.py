"""Host side of the exec channel: run one command through an in-sandbox agent.

Streams this process's stdin to the command, its stdout and stderr back apart (or a
pty's output when `tty`), forwards window size changes and interrupt signals, and
returns the command's exit code.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import sys
import termios
import time
import tty as ttymod
from pathlib import Path
from typing import Iterator

from .errors import InternalError, Unavailable
from .guest import wire

GUEST_DIR = Path(__file__).parent / "guest"


def connect_unix(path: str | Path, timeout: float = 10.0) -> socket.socket:
    """Connect to an agent's unix socket, waiting up to `timeout` for it to appear."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise Unavailable(f"the session's exec agent at {path} did not answer", fix="see `posture status`; `posture down` the session and start again")
            time.sleep(0.01)


def _winsize(fd: int) -> tuple[int, int]:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        return rows or 24, cols or 80
    except OSError:
        return 24, 80


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        ttymod.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(
    sock: socket.socket,
    argv: list[str],
    *,
    env: dict[str, str] | None,
    cwd: str,
    tty: bool,
    stdin: int = 0,
    stdout: int = 1,
    stderr: int = 2,
    stream: int = 1,
) -> int:
    """Run `argv` through the agent on `sock`; return its exit code."""
    rows, cols = _winsize(stdout if os.isatty(stdout) else stdin)
    sock.sendall(wire.pack_json(stream, wire.OPEN, {"argv": argv, "env": env, "cwd": cwd, "tty": tty, "rows": rows, "cols": cols}))
    reader = wire.Reader()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    try:
        os.fstat(stdin)
        sel.register(stdin, selectors.EVENT_READ, "stdin")
    except (OSError, ValueError, PermissionError):
        sock.sendall(wire.pack(stream, wire.STDIN_EOF))

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    pending: list[int] = []

    def on_signal(signo: int, _frame: object) -> None:
        pending.append(signo)
        try:
            os.write(wake_w, b"!")
        except OSError:
            pass

    forwarded = [signal.SIGWINCH] if tty else [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
    previous = {s: signal.signal(s, on_signal) for s in forwarded}
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    code: int | None = None
    error = ""
    try:
        with _raw_terminal(stdin) if tty else contextlib.nullcontext():
            while code is None:
                for key, _ in sel.select():
                    if key.data == "wake":
                        os.read(wake_r, 64)
                        while pending:
                            signo = pending.pop(0)
                            if signo == signal.SIGWINCH:
                                r, c = _winsize(stdout if os.isatty(stdout) else stdin)
                                sock.sendall(wire.pack_json(stream, wire.RESIZE, {"rows": r, "cols": c}))
                            else:
                                sock.sendall(wire.pack_json(stream, wire.SIGNAL, {"signal": int(signo)}))
                    elif key.data == "stdin":
                        try:
                            data = os.read(stdin, 65536)
                        except OSError:
                            data = b""
                        if data:
                            sock.sendall(wire.pack(stream, wire.STDIN, data))
                        else:
                            sel.unregister(stdin)
                            sock.sendall(wire.pack(stream, wire.STDIN_EOF))
                    else:
                        data = sock.recv(65536)
                        if not data:
                            raise Unavailable("the session's exec channel closed before the command finished", fix="see `posture status`")
                        for sid, kind, payload in reader.feed(data):
                            if sid not in (stream, 0):
                                continue
                            if kind == wire.STDOUT:
                                wire.write_all(stdout, payload)
                            elif kind == wire.STDERR:
                                wire.write_all(stderr, payload)
                            elif kind == wire.EXIT:
                                code = int(json.loads(payload)["code"])
                            elif kind == wire.ERROR:
                                try:
                                    error = json.loads(payload).get("message", "")
                                except ValueError:
                                    error = payload.decode(errors="replace")
                                    code = code if code is not None else 127
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sel.close()
        os.close(wake_r)
        os.close(wake_w)
    if error:
        print(f"posture: {error}", file=sys.stderr)
    if code is None:
        raise InternalError("the exec agent ended the command without an exit code")
    return code
