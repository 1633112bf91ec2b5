"""`[l3]` in the user's config."""

from __future__ import annotations

from ..config import checks as c

TABLE = {
    "uri": c.string,
    "kernel": c.host_path,
    "modules": c.host_path,
    "initrd": c.host_path,
    "memory_mib": c.whole(128, 65536),
    "cpus": c.whole(1, 64),
    "accel": c.one_of("auto", "kvm", "tcg"),
    "agent": c.one_of("auto", "native", "python"),
    "boot_timeout": c.whole(5, 3600),
    "guest_root": c.boolean,  # the agent's commands run as guest root instead of the user (the host side holds either way)
}
