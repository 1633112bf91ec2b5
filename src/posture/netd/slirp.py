"""slirp4netns for a sandbox: a pool of launchers started ahead of time, and the start itself.

Moving a process into a cgroup costs an RCU grace period (~10 ms) on many kernels, so
launchers are started ahead of time, each already in its own cgroup below the helper's
filtered `net` cgroup; at attach time one receives the namespace and pipe fds and execs
slirp4netns. One thread tops the pool up a little after each attach.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NS_GET_USERNS = 0xB701
SPARES = 3  # launchers kept ready
REFILL_DELAY = 0.3  # seconds after an attach before the pool is topped up
READY_TIMEOUT = 10.0  # seconds slirp4netns has to configure the sandbox's tap0

# Runs as `python3 -I -S -c _LAUNCHER FD`: first enters a private mount namespace of its own (what
# `unshare -m --propagation private` did at attach time, done ahead of time here), then waits for
# argv (JSON, with {0} {1} {2} standing for the fds passed alongside) on the unix socket FD, then
# execs it with exactly those fds inherited.
_LAUNCHER = r"""
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
    sys.exit(f"launcher: unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
if libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
    sys.exit(f"launcher: mount --make-rprivate /: {os.strerror(ctypes.get_errno())}")
s = socket.socket(fileno=int(sys.argv[1]))
msg, fds, _flags, _addr = socket.recv_fds(s, 65536, 8)
if not msg:
    sys.exit(0)
for fd in fds:
    os.set_inheritable(fd, True)
argv = [a.format(*fds) for a in json.loads(msg)]
s.close()
os.execvp(argv[0], argv)
"""


class SlirpError(Exception):
    """slirp4netns could not be started or did not become ready."""


@dataclass
class Spare:
    """A launcher waiting in its own cgroup below `net` for a sandbox to serve."""

    cgroup: str
    proc: subprocess.Popen
    sock: socket.socket


class SparePool:
    """Launchers kept ready in cgroups below `net` (cgroups module `cg`, v2 mount `mount`)."""

    def __init__(self, cg: Any, mount: Any, net: str, log: Callable[[str], None]) -> None:
        self.cg, self.mount, self.net, self.log = cg, mount, net, log
        self.spares: list[Spare] = []
        self.lock = threading.Lock()
        self.wanted = threading.Event()
        self.stopping = False
        self.filler = threading.Thread(target=self._refill_loop, name="netd-spares", daemon=True)

    def start(self) -> None:
        """Fill the pool now and start the thread that tops it up after each attach."""
        self.fill()
        self.filler.start()

    def new(self) -> Spare:
        """A fresh launcher in a new cgroup below `net`."""
        rel = f"{self.net}/s{secrets.token_hex(6)}"
        self.cg.create(rel, self.mount)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(child.fileno())],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        child.close()
        try:
            self.cg.move(proc.pid, rel, self.mount)
        except OSError:
            proc.kill()
            proc.wait()
            parent.close()
            self.cg.remove(rel, self.mount)
            raise
        return Spare(rel, proc, parent)

    def take(self) -> Spare:
        """A ready launcher (a new one when the pool is empty); the pool is topped up shortly after."""
        self.wanted.set()
        with self.lock:
            while self.spares:
                spare = self.spares.pop()
                if spare.proc.poll() is None:
                    return spare
                spare.sock.close()
                spare.proc.wait()
        return self.new()

    def fill(self) -> None:
        """Start launchers until SPARES are ready."""
        while not self.stopping:
            with self.lock:
                if len(self.spares) >= SPARES:
                    return
            try:
                spare = self.new()
            except OSError as exc:
                self.log(f"could not prepare a slirp4netns launcher: {exc}")
                return
            with self.lock:
                self.spares.append(spare)

    def _refill_loop(self) -> None:
        while not self.stopping:
            self.wanted.wait()
            time.sleep(REFILL_DELAY)  # off the path of the session's first command
            self.wanted.clear()
            self.fill()

    def stop(self) -> None:
        """End every waiting launcher and remove its cgroup."""
        self.stopping = True
        self.wanted.set()
        with self.lock:
            spares, self.spares = self.spares, []
        for spare in spares:
            spare.sock.close()  # the launcher reads EOF and exits
            try:
                spare.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                spare.proc.kill()
                spare.proc.wait()
            try:
                self.cg.remove(spare.cgroup, self.mount)
            except OSError as exc:
                self.log(f"could not remove cgroup {spare.cgroup}: {exc}")


def start(spare: Spare, pid: int, ipv6: bool) -> int:
    """Exec slirp4netns in `spare` for the network namespace of `pid`, wait until it is ready.

    Returns the write end of its exit pipe (closing it stops slirp4netns); raises SlirpError."""
    netfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        usernsfd = fcntl.ioctl(netfd, NS_GET_USERNS)
    finally:
        os.close(netfd)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    argv = [  # the launcher is in a private mount namespace already (see _LAUNCHER)
        "slirp4netns", "--configure", "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
        *(["--enable-ipv6"] if ipv6 else []),
        "--userns-path=/proc/self/fd/{0}", "-r", "{1}", "-e", "{2}",
        str(pid), "tap0",
    ]
    try:
        socket.send_fds(spare.sock, [json.dumps(argv).encode()], [usernsfd, ready_w, exit_r])
    except OSError:
        os.close(exit_w)
        raise
    finally:
        spare.sock.close()
        for fd in (usernsfd, ready_w, exit_r):
            os.close(fd)
    try:
        poller = select.poll()  # poll, not select: the fd may well be above 1024
        poller.register(ready_r, select.POLLIN)
        got = os.read(ready_r, 1) if poller.poll(READY_TIMEOUT * 1000) else b""
    finally:
        os.close(ready_r)
    if got != b"1":
        err: list[str] = []
        if spare.proc.poll() is not None and spare.proc.stderr is not None:
            err = spare.proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        os.close(exit_w)
        raise SlirpError(f"slirp4netns did not become ready: {err or 'timeout'}")
    return exit_w
