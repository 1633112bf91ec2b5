"""Registers L3 (posture.l3): the libvirt microVM backend, its `[l3]` table and `posture l3`."""

from __future__ import annotations

from typing import Any

from ..config import checks as c
from ..hookspecs import hookimpl
from . import LazyBackend


# `[l3]` in the user's config (a repo file's is ignored): declared here, so no l3 module loads for it.
TABLE = {
    "uri": c.string,
    "kernel": c.host_path,
    "modules": c.host_path,
    "memory_mib": c.whole(128, 65536),
    "cpus": c.whole(1, 64),
    "accel": c.one_of("auto", "kvm", "tcg"),
    "agent": c.one_of("auto", "native", "python"),
    "boot_timeout": c.whole(5, 3600),
    "tcg_cpu": c.one_of("max", "qemu64"),  # the emulated CPU under TCG: max (AVX2, what native agents need) or the faster qemu64
    "firmware": c.one_of("auto", "qboot", "seabios"),  # auto: qboot when QEMU ships it (it boots sooner), else SeaBIOS
    "guest_root": c.boolean,  # the agent's commands run as guest root instead of the user (the host side holds either way)
}


@hookimpl
def posture_backends() -> list[LazyBackend]:
    """The L3 backend."""
    return [LazyBackend("libvirt", "l3", "a libvirt/QEMU VM with its own kernel, the view over virtio-fs", "posture.l3.backend:LibvirtBackend")]


@hookimpl
def posture_config_tables() -> dict[str, Any]:
    """`[l3]` in the user's config."""
    return {"l3": TABLE}


@hookimpl
def posture_commands(app: Any) -> None:
    """`posture l3 probe-accel`."""
    from ..l3.backend import add_commands

    add_commands(app)
