"""Many TCP connections carried over one byte stream: the L3 guest's door to its session's gateway.

The guest has no network of its own toward the host (and none at all in network modes
allowlist and none), yet its agent must reach the session's gateway. The guest end of this
tunnel listens on the guest's own loopback (127.0.0.1:INSIDE_PORT, the address the agent's
base URL and proxy variables name) and carries every accepted connection as a stream over a
virtio-serial port; the host end, a thread of the process that holds the VM, joins each
stream to the gateway's unix socket. Nothing else can be reached through it: the host end
connects to that one socket and nowhere else, whatever a stream says.

Frames are those of wire.py (length, stream, type). Only the listening end opens streams.
Each direction of each stream has a window of WINDOW bytes: a sender sends no more than the
window the receiver has left, and the receiver gives credit back as it writes to its socket,
so a reader that stalls one connection never stalls the others sharing the port.

Standard library only: the guest runs this file under the view's python3.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import sys
import time

try:
    from . import wire
except ImportError:  # run as a script in the guest, next to wire.py
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wire  # type: ignore[no-redef]

OPEN, DATA, EOF, CLOSE, CREDIT = 32, 33, 34, 35, 36  # CREDIT: u32 bytes the receiver has written out
WINDOW = 256 * 1024
CHUNK = 64 * 1024
CHANNEL_HIGH = 1 << 20  # stop reading connections while this much waits for the channel
_U32 = struct.Struct(">I")


class _Stream:
    """One connection's state at this end."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.credit = WINDOW  # bytes we may still send to the other end
        self.out = bytearray()  # bytes from the other end, not yet written to our socket
        self.written = 0  # bytes written to our socket since we last gave credit back
        self.reading = True  # our socket has not reached EOF
        self.peer_eof = False  # the other end will send no more
        self.shut = False  # we shut our socket's write side
        self.mask = 0


class Tunnel:
    """One end: `chan` is the channel's fd; `listener` makes this the opening end, `connect` the other."""

    def __init__(self, chan: int, listener: socket.socket | None = None, connect: str | None = None) -> None:
        self.chan = chan
        self.listener = listener
        self.connect = connect
        self.sel = selectors.DefaultSelector()
        self.reader = wire.Reader()
        self.chan_out = bytearray()
        self.chan_mask = 0
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.done = False
        os.set_blocking(chan, False)
        self._chan_interest()
        if listener is not None:
            listener.setblocking(False)
            self.sel.register(listener, selectors.EVENT_READ, "accept")

    # ------------------------------------------------------------ loop
    def run(self, stop_fd: int | None = None) -> None:
        """Serve until the channel closes (or `stop_fd` becomes readable)."""
        if stop_fd is not None:
            self.sel.register(stop_fd, selectors.EVENT_READ, "stop")
        try:
            while not self.done:
                for key, mask in self.sel.select():
                    if key.data == "stop":
                        self.done = True
                    elif key.data == "chan":
                        self._chan_event(mask)
                    elif key.data == "accept":
                        self._accept()
                    else:
                        self._stream_event(key.data, mask)
                    if self.done:
                        break
        finally:
            for sid in list(self.streams):
                self._drop(sid, tell=False)
            self.sel.close()

    # ------------------------------------------------------------ the channel
    def _chan_interest(self) -> None:
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.chan_out else 0)
        if want == self.chan_mask:
            return
        if self.chan_mask:
            self.sel.modify(self.chan, want, "chan")
        else:
            self.sel.register(self.chan, want, "chan")
        self.chan_mask = want

    def _send(self, sid: int, kind: int, payload: bytes = b"") -> None:
        self.chan_out += wire.pack(sid, kind, payload)
        self._chan_interest()

    def _chan_event(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and self.chan_out:
            try:
                n = os.write(self.chan, self.chan_out)
                del self.chan_out[:n]
            except BlockingIOError:
                pass
            except OSError:
                self.done = True
                return
            if len(self.chan_out) < CHANNEL_HIGH:
                for sid in list(self.streams):
                    self._interest(sid)
            self._chan_interest()
        if mask & selectors.EVENT_READ:
            try:
                data = os.read(self.chan, CHUNK * 2)
            except BlockingIOError:
                return
            except OSError:
                data = b""  # EIO, ECONNRESET: as good as an end
            if not data:
                self.done = True  # the other end is gone: so is every connection through it
                return
            try:
                frames = self.reader.feed(data)
            except ValueError:
                self.done = True
                return
            for sid, kind, payload in frames:
                self._frame(sid, kind, payload)

    def _frame(self, sid: int, kind: int, payload: bytes) -> None:
        if kind == OPEN:
            if self.connect is not None and sid not in self.streams:
                self._open(sid)
            return
        st = self.streams.get(sid)
        if st is None:
            return
        if kind == DATA:
            if len(st.out) + len(payload) > WINDOW:  # the other end broke the window: cut it off
                self._drop(sid)
                return
            st.out += payload
        elif kind == EOF:
            st.peer_eof = True
        elif kind == CREDIT and len(payload) == 4:
            st.credit = min(WINDOW, st.credit + _U32.unpack(payload)[0])
        elif kind == CLOSE:
            self._drop(sid, tell=False)
            return
        self._interest(sid)

    # ------------------------------------------------------------ connections
    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sid = self.next_id
        self.next_id += 1
        self._add(sid, sock)
        self._send(sid, OPEN)

    def _open(self, sid: int) -> None:
        assert self.connect is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(5)
        try:
            sock.connect(self.connect)
        except OSError:
            sock.close()
            self._send(sid, CLOSE)
            return
        self._add(sid, sock)

    def _add(self, sid: int, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.streams[sid] = _Stream(sock)
        self._interest(sid)

    def _interest(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        if st.peer_eof and not st.out and not st.shut:
            try:
                st.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            st.shut = True
        if st.shut and not st.reading:
            self._drop(sid, tell=False)  # both directions are over
            return
        want = 0
        if st.reading and st.credit > 0 and len(self.chan_out) < CHANNEL_HIGH:
            want |= selectors.EVENT_READ
        if st.out:
            want |= selectors.EVENT_WRITE
        if want == st.mask:
            return
        if not st.mask:
            self.sel.register(st.sock, want, sid)
        elif not want:
            self.sel.unregister(st.sock)
        else:
            self.sel.modify(st.sock, want, sid)
        st.mask = want

    def _stream_event(self, sid: int, mask: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        try:
            if mask & selectors.EVENT_WRITE and st.out:
                n = st.sock.send(st.out)
                del st.out[:n]
                st.written += n
                if st.written >= WINDOW // 4 or not st.out:
                    self._send(sid, CREDIT, _U32.pack(st.written))
                    st.written = 0
            if mask & selectors.EVENT_READ and st.reading and st.credit > 0:
                data = st.sock.recv(min(CHUNK, st.credit))
                if data:
                    st.credit -= len(data)
                    self._send(sid, DATA, data)
                else:
                    st.reading = False
                    self._send(sid, EOF)
        except BlockingIOError:
            pass
        except OSError:
            self._drop(sid)
            return
        self._interest(sid)

    def _drop(self, sid: int, tell: bool = True) -> None:
        st = self.streams.pop(sid, None)
        if st is None:
            return
        if st.mask:
            self.sel.unregister(st.sock)
        st.sock.close()
        if tell and not self.done:
            self._send(sid, CLOSE)


def _guest_main(argv: list[str]) -> int:
    """posture-door --device DEV --listen HOST:PORT --uid U --gid G --ready FILE (in the guest, as root)."""
    opts = dict(zip(argv[0::2], argv[1::2]))
    host, _, port = opts["--listen"].rpartition(":")
    chan = os.open(opts["--device"], os.O_RDWR | os.O_CLOEXEC)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(128)
    if opts.get("--ready"):  # listening: connections queue from now on
        os.close(os.open(opts["--ready"], os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    uid, gid = int(opts.get("--uid", "65534")), int(opts.get("--gid", "65534"))
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.chdir("/")
    while True:  # the port reads as closed while the host end is not connected: wait for it
        Tunnel(chan, listener=listener).run()
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(_guest_main(sys.argv[1:]))
