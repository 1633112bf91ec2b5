"""Starting the egress proxy beside a session whose only way out is its gateway (modes allowlist, none).

Same calling convention and socket place as the gateway process (launch.py on the gateway branch):
a unix socket `gateway.sock` in the session's private runtime dir, bound into the sandbox at
posture.gateway.SOCKET_INSIDE, reached inside through the exec agent's forwarder on the sandbox's
own 127.0.0.1; the plan goes as one JSON line on stdin, which stays open (its EOF stops the proxy).
When the one gateway process hosts the proxy, `plan()` is its "egress" part and this module goes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import unixsock

SOCKET_NAME = "gateway.sock"

# Started in place of the proxy (`python3 -I -S`: a few ms, where the proxy's asyncio costs tens):
# reads the plan, then waits until the first connection is queued on the socket (or the parent goes:
# stdin at EOF) and only then execs the proxy, handing it the plan on a pipe of its own. A session
# that never goes out never pays for the proxy.
_WAITER = r"""
import os, select, sys
fd = int(sys.argv[1])
plan = b""
while not plan.endswith(b"\n"):
    chunk = os.read(0, 65536)
    if not chunk:
        sys.exit(0)
    plan += chunk
while True:
    ready, _, _ = select.select([fd, 0], [], [])
    if fd in ready:
        break
    if not os.read(0, 4096):
        sys.exit(0)
r, w = os.pipe()
os.write(w, plan)
os.close(w)
os.set_inheritable(r, True)
os.execv(sys.argv[2], [sys.argv[2], "-m", "posture.gateway.egress", "--plan-fd", str(r)])
"""


def plan(network: Any, session: str, level: str, log: Path) -> dict[str, Any]:
    """The proxy's part of a gateway plan, from the view's NetworkPolicy."""
    return {"mode": network.mode, "allow": list(network.allow), "api_hosts": list(network.api_hosts),
            "blocked": network.all_blocked(), "log": str(log), "session": session, "level": level}


def start(runtime: Path, egress: dict[str, Any]) -> tuple[subprocess.Popen, str]:
    """Bind the socket (0600), start the proxy on it; (its process, the socket's path)."""
    path = runtime / SOCKET_NAME
    sock = unixsock.listen(path)
    log = open(runtime / "gateway.log", "ab")
    try:
        proc = subprocess.Popen(["/usr/bin/python3", "-I", "-S", "-c", _WAITER, str(sock.fileno()), sys.executable],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, pass_fds=(sock.fileno(),),
                                close_fds=True, start_new_session=True)
    finally:
        log.close()
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"egress": egress, "listen_fd": sock.fileno()}).encode() + b"\n")
    proc.stdin.flush()
    sock.close()
    return proc, str(path)


def stop(proc: subprocess.Popen | None, pid: int | None, path: str | None) -> None:
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
            if any(b"posture.gateway.egress" in a for a in argv) and os.stat(f"/proc/{pid}").st_uid == os.getuid():
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
