"""The report channel: the one door from inside a session to its live triggers.

A unix socket in the session's runtime dir (outside every view), bound into the session at
REPORT_INSIDE. It carries exactly one kind of message in, a tool call as the agent's hook saw
it (`hook N\n` and the N bytes of the PreToolUse hook's JSON input), and one kind out, a
verdict (`allow\n`, or `deny\n` and the JSON Claude Code reads, with the reason the model
sees). Nothing else can be asked: no level can be lowered, nothing approved, nothing read; a
message of another shape is answered with a refusal and recorded. A request is at most
MAX_REQUEST bytes and must arrive within REQUEST_TIMEOUT seconds; at most MAX_CLIENTS are
served at once.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any, Callable

from .. import unixsock
from ..policy.events import DENY, TOOL_CALL, Event, Verdict

REPORT_INSIDE = "/run/posture/report.sock"
MAX_REQUEST = 256 * 1024
REQUEST_TIMEOUT = 10.0
MAX_CLIENTS = 16


def parse(request: bytes) -> Event | str:
    """The event in one request, or why it is refused."""
    head, sep, body = request.partition(b"\n")
    word, _, size = head.partition(b" ")
    if word != b"hook" or not sep or not size.isdigit() or int(size) != len(body):
        return "only the agent's tool-call reports are accepted here (`hook N` and the hook's input)"
    try:
        msg = json.loads(body)
    except ValueError:
        return "the hook's input is not JSON"
    if not isinstance(msg, dict):
        return "the hook's input is not a JSON object"
    event = msg.get("hook_event_name", "PreToolUse")
    if event != "PreToolUse":
        return f"only PreToolUse reports are accepted here, not {str(event)[:40]!r}"
    name, args = msg.get("tool_name"), msg.get("tool_input", {})
    if not isinstance(name, str) or not name or not isinstance(args, dict):
        return "tool_name must be a string and tool_input an object"
    return Event(kind=TOOL_CALL, tool_name=name[:200], tool_input=args)


def wire(verdict: Verdict) -> bytes:
    """A verdict as the hook prints it: nothing for allow, Claude Code's deny answer otherwise."""
    if verdict.decision != DENY:
        return b"allow\n"
    out = {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny", "permissionDecisionReason": verdict.reason}}
    return b"deny\n" + json.dumps(out).encode() + b"\n"


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
        self._sock = unixsock.listen(self.path, MAX_CLIENTS)
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
            request = _read_request(conn)
            got = parse(request) if request is not None else "no complete request within the limits"
            if isinstance(got, Event):
                verdict = self.judge(got)
            else:
                self.refused(got)
                verdict = Verdict(DENY, f"posture: {got}")
            conn.sendall(wire(verdict))
        except OSError:
            pass
        except Exception as exc:  # noqa: BLE001 - a judging failure refuses the call (fail closed)
            try:
                conn.sendall(wire(Verdict(DENY, f"posture could not judge this call: {exc}")))
            except OSError:
                pass
        finally:
            conn.close()
            self._slots.release()


def _read_request(conn: socket.socket) -> bytes | None:
    """`hook N\n` and N bytes (the hook closes its side after them), or None past the limits."""
    buf = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk:
            return buf
        buf += chunk
        if len(buf) > MAX_REQUEST:
            return None
        head, sep, body = buf.partition(b"\n")
        if sep and not (head.startswith(b"hook ") and head[5:].isdigit()):
            return buf  # not a report: refused at once
        if sep and len(body) >= int(head[5:]):
            return buf


def ask(path: str, request: bytes, timeout: float = 30.0) -> tuple[str, str]:
    """Send one raw request and return (decision, the text after it): what the hook does; for tests."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    finally:
        sock.close()
    decision, _, text = b"".join(chunks).partition(b"\n")
    return decision.decode(), text.decode()


def hook_request(hook_input: dict[str, Any]) -> bytes:
    """What the hook sends for `hook_input`."""
    body = json.dumps(hook_input).encode()
    return b"hook %d\n" % len(body) + body
