"""A TCP-to-unix-socket forwarder run by the exec agent inside the sandbox's own network namespace.

`--forward 127.0.0.1:PORT=/run/posture/gateway.sock`: connections to PORT on the sandbox's own
loopback are joined to the session's gateway socket (bound in from outside), so the agent's API
base URL is plain http://127.0.0.1:PORT while the host's loopback stays out of reach. Standard
library only; it shares the agent's selector loop (no threads: the agent forks).
"""

from __future__ import annotations

import selectors
import socket

CHUNK = 65536


class Forward:
    """Listens on host:port and joins every connection to the unix socket `target`."""

    def __init__(self, sel: selectors.BaseSelector, spec: str) -> None:
        where, _, target = spec.partition("=")
        host, _, port = where.rpartition(":")
        if not target or not port.isdigit():
            raise SystemExit(f"--forward {spec!r}: expected HOST:PORT=SOCKET")
        self.sel, self.target = sel, target
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host.strip("[]"), int(port)))
        self.listener.listen(64)
        self.listener.setblocking(False)
        sel.register(self.listener, selectors.EVENT_READ, ("fwd", self._accept))

    def _accept(self, sock: socket.socket, mask: int) -> None:
        try:
            client, _ = sock.accept()
        except OSError:
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.target)
        except OSError:
            client.close()
            upstream.close()
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _Pair(self.sel, client, upstream)


class _Pair:
    """Bytes both ways between two sockets, with back-pressure and half-close."""

    def __init__(self, sel: selectors.BaseSelector, a: socket.socket, b: socket.socket) -> None:
        self.sel = sel
        self.peer = {a: b, b: a}
        self.pending = {a: b"", b: b""}  # bytes waiting to be written to the socket
        self.reading = {a: True, b: True}
        self.mask = {a: 0, b: 0}
        for s in (a, b):
            s.setblocking(False)
        self._update()

    def _update(self) -> None:
        if not any(self.reading.values()) and not any(self.pending.values()):
            self._close()
            return
        for s, peer in self.peer.items():
            want = (selectors.EVENT_READ if self.reading[s] and not self.pending[peer] else 0) | (selectors.EVENT_WRITE if self.pending[s] else 0)
            if want == self.mask[s]:
                continue
            if not self.mask[s]:
                self.sel.register(s, want, ("fwd", self._event))
            elif not want:
                self.sel.unregister(s)
            else:
                self.sel.modify(s, want, ("fwd", self._event))
            self.mask[s] = want

    def _close(self) -> None:
        for s in self.peer:
            if self.mask[s]:
                self.sel.unregister(s)
                self.mask[s] = 0
            s.close()

    def _event(self, s: socket.socket, mask: int) -> None:
        peer = self.peer[s]
        try:
            if mask & selectors.EVENT_WRITE and self.pending[s]:
                sent = s.send(self.pending[s])
                self.pending[s] = self.pending[s][sent:]
                if not self.pending[s] and not self.reading[peer]:
                    s.shutdown(socket.SHUT_WR)
            if mask & selectors.EVENT_READ and self.reading[s]:
                data = s.recv(CHUNK)
                if data:
                    try:
                        sent = peer.send(data)
                    except BlockingIOError:
                        sent = 0
                    self.pending[peer] = data[sent:]
                else:
                    self.reading[s] = False
                    if not self.pending[peer]:
                        peer.shutdown(socket.SHUT_WR)
        except OSError:
            self.reading = dict.fromkeys(self.reading, False)
            self.pending = dict.fromkeys(self.pending, b"")
        self._update()
