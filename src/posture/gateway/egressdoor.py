"""Starting the egress proxy beside a session whose only way out is its gateway (modes allowlist, none).

Same calling convention and socket place as the gateway process (launch.py on the gateway branch):
a unix socket `gateway.sock` in the session's private runtime dir, bound into the sandbox at
posture.gateway.SOCKET_INSIDE, reached inside through the exec agent's forwarder on the sandbox's
own 127.0.0.1. The proxy gets its plan as one JSON line (in a memfd, `--plan-fd`) and a stdin that
stays open (its EOF, when the session's holder goes, stops it).
When the one gateway process hosts the proxy, `plan()` is its "egress" part and this module goes.
"""

from __future__ import annotations

import _signal  # the builtin (`signal` imports enum)
import json
import os
import select
import sys
from pathlib import Path
from typing import Any

from .. import unixsock

SOCKET_NAME = "gateway.sock"

MARK = b"posture-egress"  # the waiter's /proc/PID/comm (after its exec the proxy's command line names posture.gateway.egress)
LISTEN_FD = 3  # the listening socket's fd in the waiter and in the proxy


class Waiter:
    """The forked waiter (then the proxy it became): just what `stop` and the session need of a Popen."""

    def __init__(self, pid: int, stdin: Any) -> None:
        self.pid, self.stdin = pid, stdin
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Its exit status once it has exited (reaped), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL it (unless it was reaped already)."""
        if self.returncode is None:
            os.kill(self.pid, 9)

    def wait(self) -> int:
        """Reap it."""
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def plan(network: Any, session: str, level: str, log: Path) -> dict[str, Any]:
    """The proxy's part of a gateway plan, from the view's NetworkPolicy."""
    return {"mode": network.mode, "allow": list(network.allow), "api_hosts": list(network.api_hosts),
            "blocked": network.all_blocked(), "log": str(log), "session": session, "level": level}


def start(runtime: Path, egress: dict[str, Any]) -> tuple[Waiter, str]:
    """Bind the socket (0600) and fork the waiter that starts the proxy on its first connection;
    (the waiter, the socket's path).

    The waiter is a fork of this process, not a new interpreter (a `python3 -I -S` costs 10-20 ms of
    CPU that the session's start would share two cores with): it waits in select() until the first
    connection is queued (or this process goes: its stdin reaches EOF), then execs the proxy with the
    plan in a memfd. A session that never goes out never pays for the proxy."""
    path = runtime / SOCKET_NAME
    sock = unixsock.listen(path)
    plan = json.dumps({"egress": egress, "listen_fd": LISTEN_FD}).encode() + b"\n"
    tie_r, tie_w = os.pipe2(os.O_CLOEXEC)
    log = os.open(runtime / "gateway.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        pid = os.fork()
        if pid == 0:
            _waiter(sock.fileno(), tie_r, log, plan)  # never returns
    finally:
        for fd in (tie_r, log):
            os.close(fd)
        sock.close()
    return Waiter(pid, os.fdopen(tie_w, "wb", buffering=0)), str(path)


def _waiter(listen: int, tie: int, log: int, plan: bytes) -> None:
    """In the forked child: only os calls (no locks another thread may hold), and never back into the caller."""
    code = 70
    try:
        os.setsid()
        for sig in range(1, _signal.NSIG):  # none of the parent's Python handlers may run here
            try:
                if callable(_signal.getsignal(sig)):
                    _signal.signal(sig, _signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):  # what Popen restores before an exec
            _signal.signal(sig, _signal.SIG_DFL)
        for sig in (_signal.SIGINT, _signal.SIGHUP):  # terminal signals do not stop the gateway
            _signal.signal(sig, _signal.SIG_IGN)
        null = os.open("/dev/null", os.O_RDWR)
        for fd, target in ((tie, 0), (null, 1), (log, 2), (listen, LISTEN_FD)):
            os.dup2(fd, target)
        os.closerange(LISTEN_FD + 1, 1 << 20)  # nothing else of the parent's (the agent's socket above all)
        try:
            with open("/proc/self/comm", "wb", buffering=0) as fh:
                fh.write(MARK)
        except OSError:
            pass
        while True:
            ready, _, _ = select.select([LISTEN_FD, 0], [], [])
            if LISTEN_FD in ready:
                break
            if not os.read(0, 4096):
                code = 0
                return
        mem = os.memfd_create("posture-egress-plan", 0)  # no pipe-size limit on the plan; inheritable
        os.write(mem, plan)
        os.lseek(mem, 0, os.SEEK_SET)
        os.execv(sys.executable, [sys.executable, "-m", "posture.gateway.egress", "--plan-fd", str(mem)])
    except BaseException:  # noqa: BLE001 - the child must not unwind into its parent's code
        pass
    finally:
        os._exit(code)


def stop(proc: Waiter | None, pid: int | None, path: str | None) -> None:
    """Stop the proxy (this process's own, or the one a record names if it is still the user's), remove its socket."""
    if proc is not None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
    elif pid:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ours = Path(f"/proc/{pid}/comm").read_bytes().strip() == MARK or any(b"posture.gateway.egress" in a for a in argv)
            if ours and os.stat(f"/proc/{pid}").st_uid == os.getuid():
                os.kill(pid, 9)
        except OSError:
            pass
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def kernel_drops(log: Path, session: str, level: str, drops: dict[str, int]) -> str:
    """Write the kernel's drops (per blocked range) into the egress log; the one-line summary, or ''."""
    if not drops:
        return ""
    from .egresslog import EgressLog

    out = EgressLog(log, session, level)
    try:
        for net, count in sorted(drops.items()):
            out.write(net, None, None, "refused", net, source="kernel", reason="a blocked range", count=count)
    finally:
        out.close()
    return _summary(session, drops)


def _summary(session: str, drops: dict[str, int]) -> str:
    total = sum(drops.values())
    return (f"posture: session {session} tried to reach blocked ranges {total} time(s) ({', '.join(sorted(drops))}); "
            f"refused by the kernel; see `posture log --session {session}`")


def summary_from_log(log: str | Path | None, session: str) -> str:
    """The one-line summary of the kernel's drops a session's log holds ('' when none): for `posture down`,
    whose session's holder (the keeper) wrote them where the user does not look."""
    if not log:
        return ""
    from .egresslog import read

    drops: dict[str, int] = {}
    for entry in read(log):
        if entry.get("source") == "kernel" and entry.get("session") == session:
            drops[str(entry.get("dest"))] = drops.get(str(entry.get("dest")), 0) + int(entry.get("count") or 0)
    return _summary(session, drops) if drops else ""
