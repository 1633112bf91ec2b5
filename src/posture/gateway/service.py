"""The gateway process: `python -m posture.gateway`, one per session, owned by the user.

Its parent (the process that holds the session: the keeper, or `posture exec`) binds the
listening socket, passes it as an inherited fd, and writes the plan as one JSON line on
stdin, then keeps stdin open: when the parent goes away, stdin reaches EOF and the gateway
exits, so it never outlives its session. SIGTERM stops it too; terminal signals do not.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys


async def _run(plan: dict, listen_fd: int) -> None:
    from .proxy import Gateway

    gateway = Gateway(plan)
    sock = socket.socket(fileno=listen_fd)
    sock.setblocking(False)
    server = await asyncio.start_server(gateway.serve, sock=sock, limit=1 << 20)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def parent_check() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and not done.done():
            done.set_result("parent gone")

    os.set_blocking(0, False)
    loop.add_reader(0, parent_check)
    def on_term() -> None:
        if not done.done():
            done.set_result("SIGTERM")

    loop.add_signal_handler(signal.SIGTERM, on_term)
    async with server:
        await done


def _read_plan() -> dict:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 65536)
        if not chunk:
            raise SystemExit("posture gateway: no plan on stdin")
        line += chunk
    return json.loads(line)


def main() -> int:
    """Read the plan, serve until the parent goes or SIGTERM arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    plan = _read_plan()
    listen_fd = int(plan.pop("listen_fd"))
    asyncio.run(_run(plan, listen_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
