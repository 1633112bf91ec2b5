"""The gateway process: `python -m posture.gateway FD`, one per session, owned by the user.

Its parent (the process that holds the session: the keeper, or `posture exec`) binds the
listening socket, passes it as an inherited fd, and writes the plan as one JSON line on
stdin, then keeps stdin open: when the parent goes away, stdin reaches EOF and the gateway
exits, so it never outlives its session. SIGTERM stops it too; terminal signals do not.

It starts cheaply (the session's first command should not wait on it): until the first
connection is pending it only waits in select(); the event loop, the proxy and TLS come then.
"""

from __future__ import annotations

import _signal  # the builtin: `signal` imports enum, a few ms before the first command
import os
import select
import sys


async def _run(plan: dict, listen_fd: int) -> None:
    import asyncio
    import socket

    from . import holder
    from .proxy import Gateway

    gateway = Gateway(plan)
    sock = socket.socket(fileno=listen_fd)
    sock.setblocking(False)
    server = await asyncio.start_server(gateway.serve, sock=sock, limit=1 << 20)
    done = holder.until_gone(asyncio.get_running_loop())
    async with server:
        await done


def _read_plan() -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 65536)
        if not chunk:
            raise SystemExit("posture gateway: no plan on stdin")
        line += chunk
    return line


def main() -> int:
    """Read the plan, serve until the parent goes or SIGTERM arrives."""
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
    raw = _read_plan()  # parsed only once needed: even json costs a few ms to import
    listen_fd = int(sys.argv[-1])
    while True:  # nothing heavy before the first connection (or the parent's end)
        ready, _, _ = select.select([listen_fd, 0], [], [])
        if listen_fd in ready:
            break
        if not os.read(0, 4096):
            return 0
    import asyncio
    import json

    asyncio.run(_run(json.loads(raw), listen_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
