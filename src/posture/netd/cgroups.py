"""cgroup v2 helpers: find the v2 mount, create and check cgroups, their ids, freeze, kill.

Works on pure v2 hosts (mounted at /sys/fs/cgroup) and on hybrid hosts where the v2
tree sits at /sys/fs/cgroup/unified. A cgroup is named here by its path relative to the
root of the v2 tree ("posture/net"); `nft_path` and `level` translate that into what an
nftables `socket cgroupv2 level N "PATH"` match needs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

NFT_BASE = "/sys/fs/cgroup"  # nft resolves cgroupv2 paths relative to this directory


def v2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted in this mount namespace (its root), or None."""
    best: Path | None = None
    try:
        with open(mountinfo) as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                if not right.startswith("cgroup2 "):
                    continue
                fields = left.split()
                root, mnt = fields[3], fields[4].replace("\\040", " ")
                if root != "/":
                    continue  # a cgroup namespace's view of a subtree, not the whole tree
                candidate = Path(mnt)
                # Prefer the conventional places nft knows about.
                if best is None or str(candidate).startswith(NFT_BASE):
                    best = candidate
    except OSError:
        return None
    return best


def require_v2() -> Path:
    """The v2 mount, or raise RuntimeError naming the fix."""
    mount = v2_mount()
    if mount is None:
        raise RuntimeError("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo); mount one: mount -t cgroup2 none /sys/fs/cgroup/unified")
    return mount


def path_of(rel: str, mount: Path | None = None) -> Path:
    """The directory of cgroup `rel` (relative to the v2 root)."""
    return (mount or require_v2()) / rel.strip("/")


def level(rel: str) -> int:
    """Depth of `rel` in the v2 tree: what nft's `level` counts (root = 0)."""
    return len([p for p in rel.strip("/").split("/") if p])


def nft_path(rel: str, mount: Path | None = None) -> str:
    """The path nft needs for cgroup `rel`: relative to /sys/fs/cgroup (e.g. "unified/posture/net")."""
    full = path_of(rel, mount)
    return os.path.relpath(full, NFT_BASE)


def cgroup_id(rel: str, mount: Path | None = None) -> int | None:
    """The kernel's id of cgroup `rel` (the inode number of its directory), or None if absent."""
    try:
        return os.stat(path_of(rel, mount)).st_ino
    except FileNotFoundError:
        return None


def create(rel: str, mount: Path | None = None) -> Path:
    """Create cgroup `rel` (and its parents) if missing; return its directory."""
    path = path_of(rel, mount)
    path.mkdir(parents=True, exist_ok=True)
    return path


def procs(rel: str, mount: Path | None = None) -> list[int]:
    """Pids in cgroup `rel` and every cgroup below it."""
    base = path_of(rel, mount)
    out: list[int] = []
    if not base.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(base):
        if "cgroup.procs" in files:
            try:
                out += [int(x) for x in Path(dirpath, "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                continue
    return out


def populated(rel: str, mount: Path | None = None) -> bool:
    """True when any process lives in `rel` or below."""
    try:
        for line in path_of(rel, mount).joinpath("cgroup.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "populated":
                return value.strip() == "1"
    except FileNotFoundError:
        return False
    return bool(procs(rel, mount))


def move(pid: int, rel: str, mount: Path | None = None) -> None:
    """Move process `pid` (all its threads) into cgroup `rel`."""
    path_of(rel, mount).joinpath("cgroup.procs").write_text(str(pid))


def freeze(rel: str, frozen: bool = True, mount: Path | None = None, timeout: float = 5.0) -> None:
    """Freeze (or thaw) every process in `rel`; wait until the kernel reports it done."""
    path = path_of(rel, mount)
    path.joinpath("cgroup.freeze").write_text("1" if frozen else "0")
    deadline = time.monotonic() + timeout
    want = "frozen 1" if frozen else "frozen 0"
    while time.monotonic() < deadline:
        if want in path.joinpath("cgroup.events").read_text():
            return
        time.sleep(0.005)
    raise TimeoutError(f"cgroup {path} did not become {'frozen' if frozen else 'thawed'}")


def kill(rel: str, mount: Path | None = None, timeout: float = 5.0) -> None:
    """Kill every process in `rel` and below (cgroup.kill, else SIGKILL each); wait until empty."""
    path = path_of(rel, mount)
    if not path.is_dir():
        return
    try:
        path.joinpath("cgroup.kill").write_text("1")
    except OSError:
        for pid in procs(rel, mount):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while populated(rel, mount):
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes survive in cgroup {path}: {procs(rel, mount)}")
        time.sleep(0.002)


def remove(rel: str, mount: Path | None = None, timeout: float = 5.0) -> None:
    """Kill what is left in `rel` and remove it and its children (deepest first)."""
    base = path_of(rel, mount)
    if not base.is_dir():
        return
    kill(rel, mount, timeout)
    for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda t: -len(t[0])):
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY while the last exiting task is released
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)


def own(pid: int | str = "self") -> str | None:
    """The v2 cgroup path (relative to the v2 root) of process `pid`."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].strip()
    except OSError:
        return None
    return None


def private_mount() -> None:
    """Under `ip netns exec` /sys is a fresh sysfs without cgroups: mount cgroup2 in a private mount ns."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    os.makedirs("/sys/fs/cgroup", exist_ok=True)
    if libc.mount(b"cgroup2", b"/sys/fs/cgroup", b"cgroup2", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount -t cgroup2 none /sys/fs/cgroup")
