"""The helper's event loop: one thread, epoll, bounded per uid, nothing that waits on a client.

Connections are accepted, read and answered here without blocking (so no descriptor number
and no number of idle clients can stop it); complete requests go to a small fair pool of
worker threads. Bounds: connections in all and per uid (a connection over either is
answered with a refusal and closed at once), and a deadline by which a connection must
have sent its whole request line and, later, taken its answer. Descriptors of running
sessions (a sandbox's pidfd, slirp4netns's stderr) are watched here too.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import struct
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

from .limits import MAX_REQUEST, Limits, refusal
from .workers import FairPool

Answer = dict[str, Any]
Dispatch = Callable[[int, bytes], "Answer | Callable[[], Answer]"]
ACCEPT_BATCH = 64  # connections accepted per turn of the loop, so a flood cannot starve the rest


class Conn:
    """One client connection and where it is: reading its request, working on it, or writing the answer."""

    __slots__ = ("sock", "fd", "uid", "pid", "buf", "out", "state")

    def __init__(self, sock: socket.socket, uid: int, pid: int) -> None:
        self.sock, self.fd, self.uid, self.pid = sock, sock.fileno(), uid, pid
        self.buf = bytearray()
        self.out = b""
        self.state = "reading"


class Server:
    """Serve `listener` until `stop_fd` is readable; `dispatch(uid, line)` gives an answer or a job for the pool."""

    def __init__(self, listener: socket.socket, limits: Limits, dispatch: Dispatch, pool: FairPool,
                 log: Callable[[str], None]) -> None:
        self.listener, self.limits, self.dispatch, self.pool, self.log = listener, limits, dispatch, pool, log
        listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.conns: set[Conn] = set()
        self.per_uid: Counter[int] = Counter()
        self.deadlines: OrderedDict[Conn, float] = OrderedDict()  # in deadline order (one timeout for all)
        self.inbox: deque[Callable[[], None]] = deque()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.reserve = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # given up to shed a client at EMFILE

    # -------------------------------------------------------------- for other threads
    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the loop's thread (safe from any thread)."""
        self.inbox.append(fn)
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is pending already

    # -------------------------------------------------------------- watches (loop thread only)
    def watch(self, fd: int, callback: Callable[[int], None]) -> int:
        """Call `callback(token)` whenever `fd` is readable; the loop watches a copy (the token) of its own."""
        token = os.dup(fd)
        self.sel.register(token, selectors.EVENT_READ, ("watch", callback))
        return token

    def unwatch(self, token: int) -> None:
        """Stop watching `token` and close it."""
        try:
            self.sel.unregister(token)
        except (KeyError, ValueError):
            return
        os.close(token)

    # -------------------------------------------------------------- the loop
    def run(self, stop_fd: int) -> None:
        """The loop itself (returns when `stop_fd` is readable)."""
        self.sel.register(self.listener, selectors.EVENT_READ, ("listen", None))
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.sel.register(stop_fd, selectors.EVENT_READ, ("stop", None))
        while True:
            timeout = None
            if self.deadlines:
                timeout = max(0.0, next(iter(self.deadlines.values())) - time.monotonic())
            for key, _events in self.sel.select(timeout):
                kind, obj = key.data
                if kind == "stop":
                    return
                if self.sel.get_map().get(key.fd) is not key:
                    continue  # unwatched (or closed) by an earlier event of this batch; its number may be reused
                try:
                    self._event(kind, obj, key.fd)
                except Exception as exc:  # noqa: BLE001 - one bad event must not end the helper
                    self.log(f"loop: {kind} event failed: {exc!r}")
                    if kind == "conn":
                        self._close(obj)
            self._expire()

    def _event(self, kind: str, obj: Any, fd: int) -> None:
        if kind == "listen":
            self._accept()
        elif kind == "wake":
            self._wake()
        elif kind == "watch":
            obj(fd)
        elif kind == "conn" and obj in self.conns:
            self._readable(obj) if obj.state == "reading" else self._flush(obj)

    def close(self) -> None:
        """Close every connection and the loop's own descriptors."""
        for conn in list(self.conns):
            self._close(conn)
        for key in list(self.sel.get_map().values()):
            if key.data[0] == "watch":
                self.unwatch(key.fd)
        self.sel.close()
        for fd in (self.wake_r, self.wake_w, self.reserve):
            os.close(fd)

    def _wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while self.inbox:
            fn = self.inbox.popleft()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the loop must survive its callbacks
                self.log(f"loop callback failed: {exc!r}")

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._shed()
                else:
                    self.log(f"accept failed: {exc}")
                return
            sock.setblocking(False)
            try:
                pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            except OSError:
                sock.close()
                continue
            lim = self.limits
            if len(self.conns) >= lim.max_connections:
                _refuse(sock, refusal("max_connections", f"the network helper has {len(self.conns)} connections open", lim.max_connections))
            elif self.per_uid[uid] >= lim.max_per_uid:
                _refuse(sock, refusal("max_per_uid", f"uid {uid} has {self.per_uid[uid]} connections open to the network helper", lim.max_per_uid))
            else:
                conn = Conn(sock, uid, pid)
                self.conns.add(conn)
                self.per_uid[uid] += 1
                self.deadlines[conn] = time.monotonic() + lim.request_timeout
                self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))

    def _shed(self) -> None:
        """Out of descriptors: use the reserve to take one client off the backlog and tell it so."""
        os.close(self.reserve)
        try:
            sock, _ = self.listener.accept()
            _refuse(sock, {"ok": False, "code": "limit", "limit": "descriptors",
                           "error": "the network helper is out of file descriptors (raise its LimitNOFILE, or lower --max-connections)"})
        except OSError:
            pass
        finally:
            self.reserve = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.log("out of file descriptors: refused a connection")

    def _readable(self, conn: Conn) -> None:
        try:
            chunk = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn)
            return
        conn.buf += chunk
        end = conn.buf.find(b"\n")
        if end < 0:
            if len(conn.buf) > MAX_REQUEST:
                self._answer(conn, {"ok": False, "code": "invalid", "error": f"request larger than {MAX_REQUEST} bytes"})
            return
        line = bytes(conn.buf[:end])
        conn.buf = bytearray()
        conn.state = "working"
        self.deadlines.pop(conn, None)
        self.sel.unregister(conn.sock)
        result = self.dispatch(conn.uid, line)
        if isinstance(result, dict):
            self._answer(conn, result)
        else:
            self.pool.submit(conn.uid, lambda: self._work(conn, result))

    def _work(self, conn: Conn, job: Callable[[], Answer]) -> None:
        """In a worker thread: run the job, hand its answer to the loop (always one, so the slot is freed)."""
        try:
            answer = job()
        except BaseException as exc:  # noqa: BLE001 - the client still gets its one answer
            answer = {"ok": False, "code": "failed", "error": f"network helper: {exc}"}
        self.call_soon(lambda: self._answer(conn, answer))

    def _answer(self, conn: Conn, answer: Answer) -> None:
        if conn not in self.conns:
            return
        if conn.state == "reading":
            self.sel.unregister(conn.sock)
        conn.state = "writing"
        conn.out = json.dumps(answer).encode() + b"\n"
        self.deadlines.pop(conn, None)
        self.deadlines[conn] = time.monotonic() + self.limits.request_timeout
        self._flush(conn, registered=False)

    def _flush(self, conn: Conn, registered: bool = True) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(conn)
        elif not registered:
            self.sel.register(conn.sock, selectors.EVENT_WRITE, ("conn", conn))

    def _expire(self) -> None:
        now = time.monotonic()
        while self.deadlines:
            conn, deadline = next(iter(self.deadlines.items()))
            if deadline > now:
                return
            del self.deadlines[conn]
            if conn.state == "reading":
                what = "half a request" if conn.buf else "nothing"
                _send_once(conn.sock, refusal("request_timeout", f"sent {what} within {self.limits.request_timeout:g} s",
                                              self.limits.request_timeout))
            self._close(conn)

    def _close(self, conn: Conn) -> None:
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        self.deadlines.pop(conn, None)
        self.per_uid[conn.uid] -= 1
        if self.per_uid[conn.uid] <= 0:
            del self.per_uid[conn.uid]
        if conn.state in ("reading", "writing"):
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()
        conn.buf = bytearray()
        conn.out = b""


def _send_once(sock: socket.socket, answer: Answer) -> None:
    """Answer `sock` without waiting (what it sent is read first, so closing it then does not reset it)."""
    try:
        sock.setblocking(False)
        try:
            sock.recv(MAX_REQUEST + 1)
        except OSError:
            pass
        sock.send(json.dumps(answer).encode() + b"\n")
    except OSError:
        pass


def _refuse(sock: socket.socket, answer: Answer) -> None:
    """Answer `sock` once without waiting, and close it."""
    try:
        _send_once(sock, answer)
    finally:
        sock.close()
