"""Registers L2 (posture.l2): the bubblewrap backend, its `[l2]` table and `posture netd`."""

from __future__ import annotations

from typing import Any

from ..config import checks as c
from ..hookspecs import hookimpl
from . import LazyBackend


# `[l2]` in the user's config (a repo file's is ignored): declared here, so no l2 module loads for it.
TABLE = {"netd_socket": c.host_path}


@hookimpl
def posture_backends() -> list[LazyBackend]:
    """The L2 backend."""
    return [LazyBackend("bwrap", "l2", "bubblewrap sandbox; network through slirp4netns from an nftables-filtered cgroup (posture netd)",
                        "posture.l2.backend:BwrapBackend")]


@hookimpl
def posture_config_tables() -> dict[str, Any]:
    """`[l2]` in the user's config."""
    return {"l2": TABLE}


@hookimpl
def posture_commands(app: Any) -> None:
    """`posture netd`."""
    from ..l2.backend import add_commands

    add_commands(app)
