"""The gateway's tie to the process that holds its session: that process keeps the gateway's stdin
open, so EOF there (the holder is gone, even by SIGKILL) or SIGTERM ends the gateway."""

from __future__ import annotations

import asyncio
import os
import signal


def until_gone(loop: asyncio.AbstractEventLoop) -> asyncio.Future[str]:
    """A future that is done, with the reason, when the holder is gone or SIGTERM arrives."""
    done: asyncio.Future[str] = loop.create_future()

    def parent_check() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and not done.done():
            done.set_result("parent gone")

    def on_term() -> None:
        if not done.done():
            done.set_result("SIGTERM")

    os.set_blocking(0, False)
    loop.add_reader(0, parent_check)
    loop.add_signal_handler(signal.SIGTERM, on_term)
    return done
