"""Share one VM exec channel among many host clients.

QEMU serves the guest's virtio-serial port as a unix socket that takes one client. The
process that holds the VM (the keeper, or `posture exec` for a one-shot session) runs a
Mux in a thread: it owns that connection and listens on a private per-session socket
where every `posture exec --session` connects with the ordinary channel client. Stream ids
are rewritten so each client's commands get their own stream on the shared channel.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

from ..errors import Unavailable
from ..guest import wire


def connect_port(path: str, what: str, timeout: float) -> socket.socket:
    """Connect to the unix socket QEMU serves a virtio-serial port of the VM on (it appears when the domain starts)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise Unavailable(f"the VM's {what} {path} did not appear", fix="see the session's console.log") from None
            time.sleep(0.01)


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = wire.Reader()
        self.streams: dict[int, int] = {}  # client stream -> channel stream


class Mux:
    """The owner of a VM's exec channel and the listener other processes connect to."""

    def __init__(self, channel_path: str, listen_path: str) -> None:
        self.channel_path = channel_path
        self.listen_path = listen_path
        self.chan: socket.socket | None = None
        self.reader = wire.Reader()
        self.ready = threading.Event()
        self.closed = threading.Event()
        self.routes: dict[int, tuple[_Client, int]] = {}  # channel stream -> (client, client stream)
        self.next_stream = 1
        self.sel = selectors.DefaultSelector()
        self.thread: threading.Thread | None = None
        self.listener: socket.socket | None = None
        self.wake_r, self.wake_w = os.pipe()
        self.send_lock = threading.Lock()  # frames to the VM come from the serving thread and from wait_ready

    def start(self, connect_timeout: float = 10.0) -> None:
        """Connect to the VM's channel socket, listen for clients, serve in a daemon thread."""
        sock = connect_port(self.channel_path, "exec channel", connect_timeout)
        self.chan = sock
        Path(self.listen_path).unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            listener.bind(self.listen_path)
        finally:
            os.umask(old)
        listener.listen(16)
        self.listener = listener
        self.sel.register(sock, selectors.EVENT_READ, "chan")
        self.sel.register(listener, selectors.EVENT_READ, "accept")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.thread = threading.Thread(target=self._run, name="posture-l3-mux", daemon=True)
        self.thread.start()

    def wait_ready(self, timeout: float, ask_every: float = 1.0) -> bool:
        """True once the guest's agent said hello; False at `timeout` or as soon as the VM's end closes.

        The agent greets when it opens its port; the host also asks again every `ask_every`
        seconds (a HELLO on stream 0, which the agent answers), so that a greeting lost on
        the way can only delay the start, never stall it."""
        deadline = time.monotonic() + timeout
        next_ask = time.monotonic() + ask_every
        while not self.ready.is_set():
            now = time.monotonic()
            if self.closed.is_set() or now > deadline:
                return False
            if now >= next_ask:
                self._send(wire.pack_json(0, wire.HELLO, {"agent": "posture", "version": 1}))
                next_ask = now + ask_every
            self.ready.wait(0.05)
        return True

    def _send(self, frame: bytes) -> None:
        assert self.chan is not None
        with self.send_lock:
            try:
                self.chan.sendall(frame)
            except OSError:
                pass

    def close(self) -> None:
        """Stop serving and drop every connection."""
        self.closed.set()
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=2)
        Path(self.listen_path).unlink(missing_ok=True)

    # ------------------------------------------------------------ loop
    def _run(self) -> None:
        try:
            while not self.closed.is_set():
                for key, _ in self.sel.select(timeout=1.0):
                    if key.data == "wake":
                        break
                    if key.data == "chan":
                        self._from_channel()
                    elif key.data == "accept":
                        assert self.listener is not None
                        conn, _ = self.listener.accept()
                        conn.setblocking(True)
                        client = _Client(conn)
                        self.sel.register(conn, selectors.EVENT_READ, client)
                    else:
                        self._from_client(key.data)
        finally:
            self.closed.set()
            for key in list(self.sel.get_map().values()):
                if isinstance(key.data, _Client):
                    key.data.sock.close()
            self.sel.close()
            if self.chan is not None:
                self.chan.close()
            if self.listener is not None:
                self.listener.close()
            os.close(self.wake_r)
            os.close(self.wake_w)

    def _from_channel(self) -> None:
        assert self.chan is not None
        data = self.chan.recv(65536)
        if not data:
            self.closed.set()  # the VM is gone: its clients see their sockets close
            return
        for stream, kind, payload in self.reader.feed(data):
            if stream == 0:
                if kind == wire.HELLO:
                    self.ready.set()
                continue
            route = self.routes.get(stream)
            if route is None:
                continue
            client, cstream = route
            if kind == wire.EXIT:
                del self.routes[stream]
                client.streams.pop(cstream, None)
            try:
                client.sock.sendall(wire.pack(cstream, kind, payload))
            except OSError:
                self._drop(client)

    def _from_client(self, client: _Client) -> None:
        assert self.chan is not None
        try:
            data = client.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        try:
            frames = client.reader.feed(data)
        except ValueError:
            self._drop(client)
            return
        for cstream, kind, payload in frames:
            vstream = client.streams.get(cstream)
            if kind == wire.OPEN:
                if vstream is not None:
                    continue
                vstream = self.next_stream
                self.next_stream += 1
                client.streams[cstream] = vstream
                self.routes[vstream] = (client, cstream)
            elif vstream is None:
                continue
            with self.send_lock:
                self.chan.sendall(wire.pack(vstream, kind, payload))

    def _drop(self, client: _Client) -> None:
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        assert self.chan is not None
        for vstream in client.streams.values():
            # the client went away: hang up its commands, as a closing terminal would
            self.routes.pop(vstream, None)
            self._send(wire.pack_json(vstream, wire.SIGNAL, {"signal": int(signal.SIGHUP)}))
        client.streams.clear()

