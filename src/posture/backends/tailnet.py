"""Registers L4 (posture.l4): the tailnet backend, its `[l4]` table and `posture l4`."""

from __future__ import annotations

from typing import Any

from ..config import checks as c
from ..hookspecs import hookimpl
from . import LazyBackend


# `[l4]` in the user's config (a repo file's is ignored): declared here, so no l4 module loads for it.
TABLE = {
    "host": c.string,
    "user": c.string,
    "port": c.whole(1, 65535),
    "identity": c.host_path,
    "workdir": c.string,
}


@hookimpl
def posture_backends() -> list[LazyBackend]:
    """The L4 backend."""
    return [LazyBackend("tailnet", "l4", "remote host over Tailscale (pinned SSH, git sync, tmux)", "posture.l4.backend:TailnetBackend", remote_work=True)]


@hookimpl
def posture_config_tables() -> dict[str, Any]:
    """`[l4]` in the user's config."""
    return {"l4": TABLE}


@hookimpl
def posture_commands(app: Any) -> None:
    """`posture l4 enroll`."""
    from ..l4.backend import add_commands

    add_commands(app)
