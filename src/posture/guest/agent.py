"""The in-sandbox exec agent: runs commands on request and streams their output back.

Runs inside an L2 sandbox or an L3 guest under the system's python3, standard library
only. It serves the wire format of `wire.py` on a unix socket (`--listen PATH`) or on a
character device such as a virtio-serial port (`--device PATH`).

Each OPEN starts a command in a new session: with `tty` on a fresh pty made in here (so
the command's controlling terminal is the sandbox's own, never the user's), otherwise
with separate stdout and stderr pipes. The exit code comes back as 128+N for a signal N.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import selectors
import signal
import struct
import sys
import termios
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire  # noqa: E402

READ_CHUNK = 65536


class Proc:
    """One command started for one stream of one connection."""

    def __init__(self, conn: "Conn", stream: int, pid: int, stdin_fd: int, out_fds: dict[int, int], tty: bool) -> None:
        self.conn = conn
        self.tty = tty
        self.stream = stream
        self.pid = pid
        self.stdin_fd = stdin_fd  # -1 once closed
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.out_fds = out_fds  # fd -> frame type (STDOUT / STDERR)
        self.status: int | None = None


class Conn:
    """One client connection (a socket or the device)."""

    def __init__(self, rfd: int, wfd: int, closeable: bool) -> None:
        self.rfd, self.wfd, self.closeable = rfd, wfd, closeable
        self.reader = wire.Reader()
        self.procs: dict[int, Proc] = {}

    def send(self, frame: bytes) -> None:
        try:
            wire.write_all(self.wfd, frame)
        except OSError:
            pass


class Agent:
    """The select loop that owns every connection and child."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.by_pid: dict[int, Proc] = {}
        self.listener = None  # a socket.socket in the socket modes
        self.forward = None  # forward.Forward when the session has a gateway
        self.sig_r, sig_w = os.pipe()
        os.set_blocking(self.sig_r, False)
        os.set_blocking(sig_w, False)
        signal.set_wakeup_fd(sig_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.sig_r, selectors.EVENT_READ, ("sig", None))

    # ------------------------------------------------------------ connections
    def listen(self, path: str) -> None:
        import socket  # only the socket modes need it (an emulated guest starts faster without)

        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        sock.bind(path)
        os.umask(old)
        sock.listen(16)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, ("accept", None))

    def listen_fd(self, fd: int) -> None:
        """Serve a listening socket the host bound and handed over (the sandbox never sees its path)."""
        import socket

        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, ("accept", None))

    def add_conn(self, rfd: int, wfd: int, closeable: bool) -> Conn:
        conn = Conn(rfd, wfd, closeable)
        self.sel.register(rfd, selectors.EVENT_READ, ("conn", conn))
        conn.send(wire.pack_json(0, wire.HELLO, {"agent": "posture", "version": 1}))
        return conn

    def drop_conn(self, conn: Conn) -> None:
        try:
            self.sel.unregister(conn.rfd)
        except (KeyError, ValueError):
            pass
        for proc in list(conn.procs.values()):
            self._kill(proc, signal.SIGHUP)
        if conn.closeable:
            os.close(conn.rfd)

    # ------------------------------------------------------------ children
    def _kill(self, proc: Proc, signo: int) -> None:
        for target in (-proc.pid, proc.pid):
            try:
                os.kill(target, signo)
                return
            except ProcessLookupError:
                continue

    def open_stream(self, conn: Conn, stream: int, req: dict) -> None:
        argv = req.get("argv") or []
        if not isinstance(argv, list) or not argv:
            conn.send(wire.pack_json(stream, wire.ERROR, {"message": "empty command"}))
            conn.send(wire.pack_json(stream, wire.EXIT, {"code": 127}))
            return
        env = req.get("env")
        cwd = req.get("cwd") or "/"
        strings = [*argv, cwd, *((env or {}).keys() if isinstance(env, dict) else []), *((env or {}).values() if isinstance(env, dict) else [])]
        if (env is not None and not isinstance(env, dict)) or not all(isinstance(x, str) and "\0" not in x for x in strings):
            # the same contract as the native agent: strings only, no NUL, nothing converted
            conn.send(wire.pack_json(stream, wire.ERROR, {"message": "malformed command request (argv, env and cwd must be strings without NUL)"}))
            conn.send(wire.pack_json(stream, wire.EXIT, {"code": 126}))
            return
        env = dict(os.environ) if env is None else env
        tty = bool(req.get("tty"))
        err_r, err_w = os.pipe2(os.O_CLOEXEC)  # reports a failed exec
        if tty:
            master, slave = os.openpty()
            rows, cols = int(req.get("rows") or 24), int(req.get("cols") or 80)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            child_fds = (slave, slave, slave)
        else:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            e_r, e_w = os.pipe()
            child_fds = (in_r, out_w, e_w)
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(err_r)
                os.setsid()
                for target, fd in enumerate(child_fds):
                    os.dup2(fd, target)
                if tty:
                    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
                os.closerange(3, err_w)
                os.closerange(err_w + 1, 65536)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            except BaseException as exc:  # noqa: BLE001 - report anything that stops the exec
                code = 127 if isinstance(exc, FileNotFoundError) else 126
                try:
                    os.write(err_w, json.dumps({"code": code, "message": f"{argv[0]}: {exc}"}).encode())
                finally:
                    os._exit(code)
        os.close(err_w)
        failure = b""
        while True:
            try:
                chunk = os.read(err_r, 4096)
            except InterruptedError:
                continue
            if not chunk:
                break
            failure += chunk
        os.close(err_r)
        if tty:
            os.close(slave)
            stdin_fd, outs = os.dup(master), {master: wire.STDOUT}
        else:
            for fd in (in_r, out_w, e_w):
                os.close(fd)
            stdin_fd, outs = in_w, {out_r: wire.STDOUT, e_r: wire.STDERR}
        proc = Proc(conn, stream, pid, stdin_fd, outs, tty)
        os.set_blocking(stdin_fd, False)
        conn.procs[stream] = proc
        self.by_pid[pid] = proc
        for fd in outs:
            self.sel.register(fd, selectors.EVENT_READ, ("out", proc))
        if failure:
            conn.send(wire.pack(stream, wire.ERROR, failure))
        else:
            conn.send(wire.pack_json(stream, wire.STARTED, {"pid": pid}))

    def _flush_stdin(self, proc: Proc) -> None:
        if proc.stdin_fd < 0:
            return
        while proc.stdin_buf:
            try:
                n = os.write(proc.stdin_fd, proc.stdin_buf)
            except BlockingIOError:
                self._want_write(proc, True)
                return
            except OSError:
                proc.stdin_buf.clear()
                break
            del proc.stdin_buf[:n]
        self._want_write(proc, False)
        if proc.stdin_eof:
            self._close_stdin(proc)

    def _want_write(self, proc: Proc, on: bool) -> None:
        try:
            key = self.sel.get_key(proc.stdin_fd)
        except KeyError:
            key = None
        if on and key is None:
            self.sel.register(proc.stdin_fd, selectors.EVENT_WRITE, ("in", proc))
        elif not on and key is not None:
            self.sel.unregister(proc.stdin_fd)

    def _close_stdin(self, proc: Proc) -> None:
        if proc.stdin_fd >= 0:
            self._want_write(proc, False)
            if proc.out_fds.get(proc.stdin_fd) is None:
                os.close(proc.stdin_fd)
            proc.stdin_fd = -1

    def handle_frame(self, conn: Conn, stream: int, kind: int, payload: bytes) -> None:
        if stream == 0:
            if kind == wire.HELLO:  # the host asks again (a greeting may have gone before it listened)
                conn.send(wire.pack_json(0, wire.HELLO, {"agent": "posture", "version": 1}))
            return
        proc = conn.procs.get(stream)
        if kind == wire.OPEN:
            if proc is not None:
                conn.send(wire.pack_json(stream, wire.ERROR, {"message": "stream already open"}))
                return
            try:
                req = json.loads(payload)
            except ValueError:
                req = None
            if not isinstance(req, dict):
                conn.send(wire.pack_json(stream, wire.ERROR, {"message": "malformed command request"}))
                conn.send(wire.pack_json(stream, wire.EXIT, {"code": 126}))
                return
            self.open_stream(conn, stream, req)
        elif proc is None:
            return
        elif kind == wire.STDIN:
            proc.stdin_buf += payload
            self._flush_stdin(proc)
        elif kind == wire.STDIN_EOF:
            if proc.tty:
                proc.stdin_buf += b"\x04"  # a terminal's end of input is its EOF character
            else:
                proc.stdin_eof = True
            self._flush_stdin(proc)
        elif kind == wire.RESIZE:
            size = json.loads(payload)
            fd = next(iter(proc.out_fds), -1)
            if proc.tty and fd >= 0:
                fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", int(size["rows"]), int(size["cols"]), 0, 0))
                self._kill(proc, signal.SIGWINCH)
        elif kind == wire.SIGNAL:
            self._kill(proc, int(json.loads(payload)["signal"]))

    def read_output(self, fd: int, proc: Proc) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            data = b""
        if data:
            proc.conn.send(wire.pack(proc.stream, proc.out_fds[fd], data))
            return
        self.sel.unregister(fd)
        kind = proc.out_fds.pop(fd)
        if kind == wire.STDOUT and proc.stdin_fd >= 0 and not proc.out_fds:
            self._close_stdin(proc)
        os.close(fd)
        self._maybe_finish(proc)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.by_pid.pop(pid, None)
            if proc is None:
                continue
            proc.status = os.waitstatus_to_exitcode(status)
            self._maybe_finish(proc)

    def _maybe_finish(self, proc: Proc) -> None:
        if proc.status is None or proc.out_fds:
            return
        self._close_stdin(proc)
        code = proc.status if proc.status >= 0 else 128 - proc.status
        proc.conn.procs.pop(proc.stream, None)
        proc.conn.send(wire.pack_json(proc.stream, wire.EXIT, {"code": code}))

    # ------------------------------------------------------------ loop
    def run(self) -> None:
        while True:
            for key, mask in self.sel.select():
                what, obj = key.data
                if what == "fwd":  # the gateway forwarder (forward.py)
                    obj(key.fileobj, mask)
                elif what == "sig":
                    try:
                        while os.read(self.sig_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif what == "accept":
                    assert self.listener is not None
                    client, _ = self.listener.accept()
                    fd = client.detach()
                    self.add_conn(fd, fd, True)
                elif what == "conn":
                    try:
                        data = os.read(obj.rfd, READ_CHUNK)
                    except OSError:
                        data = b""
                    if not data:
                        if obj.closeable:
                            self.drop_conn(obj)
                        else:
                            time.sleep(0.05)  # a serial port with no host end reads empty
                        continue
                    try:
                        frames = obj.reader.feed(data)
                    except ValueError:
                        self.drop_conn(obj)
                        continue
                    for stream, kind, payload in frames:
                        self.handle_frame(obj, stream, kind, payload)
                elif what == "out":
                    self.read_output(key.fd, obj)
                elif what == "in":
                    self._flush_stdin(obj)
            # a child may have exited while its output was still being drained
            self.reap()


USAGE = "usage: agent.py [--listen SOCK] [--listen-fd FD] [--device DEV] [--ready-fd FD] [--forward HOST:PORT=SOCK]"


def _parse(argv: list[str]) -> dict[str, str]:
    """--name value pairs (no argparse: it costs a quarter second to import in an emulated guest)."""
    known = {"--listen", "--listen-fd", "--device", "--ready-fd", "--forward"}
    out: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name not in known:
            raise SystemExit(f"{USAGE}\nunknown argument {arg!r}")
        if not eq:
            value = next(it, None)
            if value is None:
                raise SystemExit(f"{USAGE}\n{name} needs a value")
        out[name[2:].replace("-", "_")] = value
    return out


def main(argv: list[str] | None = None) -> int:
    """Serve exec requests until killed."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    agent = Agent()
    if args.get("forward"):
        import forward  # the session's gateway door (the sandbox's own loopback only)

        agent.forward = forward.Forward(agent.sel, args["forward"])
    if args.get("listen"):
        agent.listen(args["listen"])
    if args.get("listen_fd") is not None:
        agent.listen_fd(int(args["listen_fd"]))
    if args.get("device"):
        fd = os.open(args["device"], os.O_RDWR | os.O_NOCTTY)
        agent.add_conn(fd, fd, False)
    if args.get("ready_fd") is not None:
        ready = int(args["ready_fd"])
        os.write(ready, b"1")
        os.close(ready)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
