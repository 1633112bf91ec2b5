"""The report channel: the one door from inside a session to its live triggers.

A unix socket in the session's runtime dir (outside every view), bound into the session at
REPORT_INSIDE. It carries exactly one kind of message in, a tool-call event, and one kind
out, a verdict (allow or deny, with the reason the model sees). Nothing else can be asked:
no level can be lowered, nothing approved, nothing read; a message of another shape is
answered with a refusal and recorded. Each connection sends one line of at most
MAX_REQUEST bytes within REQUEST_TIMEOUT seconds; at most MAX_CLIENTS are served at once.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable

from ..policy.events import DENY, TOOL_CALL, Event, Verdict

REPORT_INSIDE = "/run/posture/report.sock"
MAX_REQUEST = 256 * 1024
REQUEST_TIMEOUT = 10.0
MAX_CLIENTS = 16
FIELDS = {"type", "hook_event", "tool_name", "tool_input", "tool_use_id", "session_id"}


def parse(line: bytes) -> Event | str:
    """The event in one request line, or why it is refused."""
    try:
        msg = json.loads(line)
    except ValueError:
        return "not a JSON object"
    if not isinstance(msg, dict):
        return "not a JSON object"
    if msg.get("type") != TOOL_CALL:
        return f"only tool-call events are accepted here, not {str(msg.get('type'))[:40]!r}"
    extra = set(msg) - FIELDS
    if extra:
        return f"unknown fields {sorted(extra)[:5]}"
    name, args = msg.get("tool_name"), msg.get("tool_input", {})
    if not isinstance(name, str) or not name or not isinstance(args, dict):
        return "tool_name must be a string and tool_input an object"
    return Event(kind=TOOL_CALL, tool_name=name[:200], tool_input=args)


class ReportServer:
    """Serves the report channel of one session on `path`; `judge` answers each event, `refused`
    hears of every message that was not an event."""

    def __init__(self, path: Path, judge: Callable[[Event], Verdict], refused: Callable[[str], None]) -> None:
        self.path, self.judge, self.refused = path, judge, refused
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        """Bind the socket (mode 0600 in the private runtime dir) and serve in a thread."""
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(MAX_CLIENTS)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="posture-report", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._closed.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            line = _read_line(conn)
            got = parse(line) if line is not None else "no complete request line"
            if isinstance(got, Event):
                verdict = self.judge(got)
            else:
                self.refused(got)
                verdict = Verdict(DENY, f"posture: {got}")
            conn.sendall(json.dumps(verdict.to_wire()).encode() + b"\n")
        except OSError:
            pass
        except Exception as exc:  # noqa: BLE001 - a judging failure refuses the call (fail closed)
            try:
                conn.sendall(json.dumps(Verdict(DENY, f"posture could not judge this call: {exc}").to_wire()).encode() + b"\n")
            except OSError:
                pass
        finally:
            conn.close()
            self._slots.release()


def _read_line(conn: socket.socket) -> bytes | None:
    buf = b""
    while b"\n" not in buf:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
        if len(buf) > MAX_REQUEST:
            return None
    return buf.split(b"\n", 1)[0]


def ask(path: str, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one message and return the answer (what the in-session hook does; also for tests)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        line = _read_line(sock)
    finally:
        sock.close()
    if line is None:
        raise OSError("the report channel closed without an answer")
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ValueError("the report channel answered something other than a verdict")
    return answer
