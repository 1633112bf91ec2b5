"""Registers L3 (posture.l3): the libvirt microVM backend, its `[l3]` table and `posture l3`."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from . import LazyBackend


@hookimpl
def posture_backends() -> list[LazyBackend]:
    """The L3 backend."""
    return [LazyBackend("libvirt", "l3", "a libvirt/QEMU VM with its own kernel, the view over virtio-fs", "posture.l3.backend:LibvirtBackend")]


@hookimpl
def posture_config_tables() -> dict[str, Any]:
    """`[l3]` in the user's config."""
    from ..l3.config import TABLE

    return {"l3": TABLE}


@hookimpl
def posture_commands(app: Any) -> None:
    """`posture l3 probe-accel`."""
    from ..l3.backend import add_commands

    add_commands(app)
