"""The View as bubblewrap arguments: system paths read-only, generated /etc files, a tmpfs home with
the profile's binds, a private /tmp, the project read-write with protected paths read-only and
denied paths hidden; and the hardening flags that do not depend on the view."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

SLIRP_DNS4, SLIRP_DNS6 = "10.0.2.3", "fd00::3"


def which(name: str) -> str | None:
    """`name` on PATH, else in /usr/bin or /usr/sbin."""
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)


def read_int(path: str) -> int | None:
    """The first whole number in a file (a sysctl), or None."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _under(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def system_args(system_ro: list[str], skip: set[str]) -> list[str]:
    """Read-only binds of system paths; symlinks stay symlinks when their target is in view."""
    args: list[str] = []
    real_dirs = [p for p in system_ro if not os.path.islink(p)]
    for path in system_ro:
        if path in skip:
            continue
        if os.path.islink(path):
            real = os.path.realpath(path)
            if _under(real, real_dirs):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.exists(real):
                args += ["--ro-bind", real, path]  # resolve a chain that leaves the view (e.g. into /run)
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def view_args(view: Any, runtime: Path, ipv6: bool = True) -> tuple[list[str], list[tuple[str, bool]]]:
    """The filesystem part of bwrap's command line for `view`, and the placeholders it needs.

    Generated files (passwd, group, resolv.conf) are written into `runtime` (a private
    host directory) and bound read-only.
    """
    from .. import placeholders

    etc = runtime / "etc"
    etc.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = dict(view.files)
    files["/etc/resolv.conf"] = f"nameserver {SLIRP_DNS4}\n" + (f"nameserver {SLIRP_DNS6}\n" if ipv6 else "")
    args = system_args(list(view.system_ro), skip=set(files))
    for target, content in files.items():
        src = etc / Path(target).name
        src.write_text(content)
        args += ["--ro-bind", str(src), target]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/run"]
    args += ["--perms", "0700", "--tmpfs", view.home]
    for bind in view.binds:
        if not os.path.exists(bind.source):
            continue
        args += ["--bind" if bind.writable else "--ro-bind", bind.source, bind.target]
    args += toolchain_args(view)
    args += ["--bind", view.project, view.project]
    wanted: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for path in view.protected:
        point, is_dir = placeholders.mount_point(view.project, path)
        if point in seen:
            continue
        seen.add(point)
        if os.path.islink(point):
            real = os.path.realpath(point)
            if _under(real, [view.project]) and os.path.exists(real):
                args += ["--ro-bind", real, real]
            continue
        if not os.path.lexists(point):
            wanted.append((point, is_dir))
        args += ["--ro-bind", point, point]
    for path in view.denied:
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        elif os.path.lexists(path):
            args += ["--ro-bind", "/dev/null", path]
    return args, wanted


def toolchain_args(view: Any) -> list[str]:
    """The links that lead to the user's toolchains, and the credential files their trees hold, masked."""
    tc = getattr(view, "toolchains", None)
    if tc is None:
        return []
    args: list[str] = []
    for path, target in tc.links:
        args += ["--symlink", target, path]
    for path in tc.masks:
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--perms", "0500", "--tmpfs", path, "--remount-ro", path]
        else:
            args += ["--ro-bind", "/dev/null", path]
    return args


def hardening_args(hostname: str) -> list[str]:
    """Namespaces, session, capabilities: the part of the command line that does not depend on the view."""
    return [
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--hostname", hostname,
    ]
