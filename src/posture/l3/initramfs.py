"""Build the L3 guest's initramfs in Python: a newc cpio with a few modules and an init.

With the native agent the init is guest/init.c, built the same way (`build_native`: no busybox;
it does everything below with system calls, in one process). Otherwise it is the shell INIT
under busybox. Either is generic (one image per kernel, cached). The shell one loads the modules with two calls of
busybox's modprobe (dependencies from a modules.dep written here; one process per group, not
one per module: every fork costs milliseconds under TCG), without their signatures when the
kernel does not insist on them (no RSA check per module in an emulated CPU), mounts the `root` virtio-fs share read-only at /newroot and the `rw` share at
/newroot/.posture-guest/rw, then runs the session's own boot steps from the share
(l3/guestboot.py: binds, tmpfs, network) and switches root into the exec agent.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

from ..errors import Unavailable

# What the guest needs, in the order the modules must load (dependencies are added first).
MODULES: tuple[str, ...] = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "fuse", "virtiofs", "virtio_console", "failover", "net_failover", "virtio_net",
)
ROOT_MODULES = ("virtio_pci", "virtiofs")  # loaded first: the root share is mounted as soon as they are in
BUSYBOX_APPLETS = ("sh", "mount", "mkdir", "insmod", "modprobe", "switch_root", "cat", "ip", "ln", "touch", "echo", "sleep", "usleep", "seq", "poweroff", "chroot", "chown")

INIT = r"""#!/bin/sh
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
read -r up _ < /proc/uptime; echo "posture-t: init $up"
modprobe -a @ROOT_MODULES@ || echo "posture-init: modprobe @ROOT_MODULES@ failed"
mount -t virtiofs -o ro root /newroot || { echo "posture-init: cannot mount the root share"; poweroff -f; }
# warm up python (the agent's interpreter, if it is the agent) on another vCPU while the rest loads
read online < /sys/devices/system/cpu/online
[ "$online" != 0 ] && [ -x /newroot/.posture-guest/warm ] && chroot /newroot /.posture-guest/warm >/dev/null 2>&1 &
modprobe -a @LATER_MODULES@ || echo "posture-init: modprobe @LATER_MODULES@ failed"
read -r up _ < /proc/uptime; echo "posture-t: modules $up"
mount -t virtiofs rw /newroot/.posture-guest/rw || { echo "posture-init: cannot mount the rw share"; poweroff -f; }
. /newroot/.posture-guest/setup.sh
echo "posture-init: setup failed"
poweroff -f
"""

TRIVIAL_INIT = r"""#!/bin/sh
echo posture-probe-ok
/bin/poweroff -f
"""


SIG_MAGIC = b"~Module signature appended~\n"


def signatures_optional(modules: Path) -> bool:
    """True when the kernel's config (boot/config-RELEASE beside the module tree) says it loads unsigned modules."""
    config = modules.parent.parent.parent / "boot" / f"config-{modules.name}"
    try:
        text = config.read_text(errors="replace")
    except OSError:
        return False
    return "CONFIG_MODULE_SIG_FORCE=y" not in text and ("# CONFIG_MODULE_SIG_FORCE is not set" in text or "CONFIG_MODULE_SIG=y" not in text)


def strip_signature(blob: bytes) -> bytes:
    """`blob` without its appended signature (the guest kernel then skips a sha256 and RSA check per module under TCG)."""
    if not blob.endswith(SIG_MAGIC) or len(blob) < len(SIG_MAGIC) + 12:
        return blob
    siglen = int.from_bytes(blob[-len(SIG_MAGIC) - 4:-len(SIG_MAGIC)], "big")
    end = len(blob) - len(SIG_MAGIC) - 12 - siglen
    return blob[:end] if end > 0 else blob


def _module_index(modules: Path) -> dict[str, Path]:
    """Module name (with '-' as '_') -> file, for every .ko[.xz|.zst] under `modules`."""
    index: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(modules / "kernel"):
        for name in files:
            m = re.match(r"^(.*)\.ko(\.xz|\.zst|\.gz)?$", name)
            if m:
                index.setdefault(m.group(1).replace("-", "_"), Path(dirpath) / name)
    return index


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if path.suffix == ".zst":
        if not shutil.which("zstd"):
            raise Unavailable(f"{path} is zstd-compressed and zstd is not installed", fix="apt-get install zstd")
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


def _depends(blob: bytes) -> list[str]:
    """The `depends=` entry of a module's .modinfo section."""
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", blob)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def resolve_modules(modules: Path, wanted: tuple[str, ...] = MODULES) -> list[tuple[str, bytes]]:
    """`wanted` plus their dependencies, dependencies first, as (name, uncompressed .ko)."""
    index = _module_index(modules)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        path = index.get(name)
        if path is None:
            builtin = modules / "modules.builtin"
            if builtin.exists() and re.search(rf"/{re.escape(name)}\.ko$", builtin.read_text().replace("-", "_"), re.M):
                seen.add(name)
                return
            if name in ("failover", "net_failover"):  # only some kernels split these out
                seen.add(name)
                return
            raise Unavailable(f"kernel module {name} not found under {modules} (needed by {' <- '.join(chain) or 'the guest'})", fix="use a kernel with virtio and virtiofs support (Debian's linux-image-cloud-amd64)")
        blob = _read_module(path)
        seen.add(name)
        for dep in _depends(blob):
            visit(dep, (*chain, name))
        order.append((name, blob))

    for name in wanted:
        visit(name, ())
    return order


def _closure(name: str, deps: dict[str, list[str]]) -> list[str]:
    """`name` and everything it needs, dependencies first, `name` last."""
    out: list[str] = []

    def visit(m: str) -> None:
        for d in deps.get(m, []):
            visit(d)
        if m not in out:
            out.append(m)

    visit(name)
    return out


class Cpio:
    """A newc-format cpio archive written in memory."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1
        self.dirs: set[str] = set()

    def parents(self, name: str) -> None:
        """Add every missing parent directory of `name` (the kernel's unpacker makes none)."""
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.directory(d)

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}" for v in (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        )
        self.ino += 1
        self.out.write(header.encode() + encoded)
        self.out.write(b"\0" * (-(110 + len(encoded)) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        """Add a directory."""
        if name in self.dirs:
            return
        self.parents(name)
        self.dirs.add(name)
        self._entry(name, 0o040000 | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file."""
        self.parents(name)
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link."""
        self.parents(name)
        self._entry(name, 0o120000 | 0o777, target.encode())

    def node(self, name: str, mode: int, major: int, minor: int) -> None:
        """Add a device node."""
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}" for v in (self.ino, mode, 0, 0, 1, 0, 0, 0, 0, major, minor, len(encoded), 0)
        )
        self.ino += 1
        self.out.write(header.encode() + encoded)
        self.out.write(b"\0" * (-(110 + len(encoded)) % 4))

    def finish(self) -> bytes:
        """Close the archive and return its bytes."""
        self._entry("TRAILER!!!", 0, nlink=1)
        data = self.out.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _base(cpio: Cpio) -> None:
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        cpio.directory(d)
    cpio.node("dev/console", 0o020000 | 0o600, 5, 1)
    cpio.node("dev/null", 0o020000 | 0o666, 1, 3)


def _add_modules(cpio: Cpio, modules: Path, wanted: tuple[str, ...]) -> tuple[list[str], list[str], list[str], str]:
    """Put `wanted` (and their dependencies) with a modules.dep in `cpio`; (load order, the root share's
    modules, the rest asked for, the kernel release)."""
    unsigned = signatures_optional(modules)
    resolved = resolve_modules(modules, wanted) if wanted else []
    names = [name for name, _ in resolved]
    deps = {name: [d for d in _depends(blob) if d in names] for name, blob in resolved}
    release = modules.name  # busybox's modprobe looks in /lib/modules/$(uname -r)
    lines = []
    for name, blob in resolved:
        cpio.file(f"lib/modules/{release}/{name}.ko", strip_signature(blob) if unsigned else blob)
        # modules.dep lists a module's dependencies in reverse load order (as depmod does)
        lines.append(f"{name}.ko: " + " ".join(f"{d}.ko" for d in reversed(_closure(name, deps)[:-1])))
    cpio.file(f"lib/modules/{release}/modules.dep", ("\n".join(lines) + "\n").encode())
    first = [m for m in wanted if m in ROOT_MODULES and m in names]
    later = [m for m in wanted if m not in ROOT_MODULES and m in names and not any(m in _closure(f, deps) for f in first)]
    root_closure = {d for f in first for d in _closure(f, deps)}
    order = [n for n in names if n in root_closure] + ["--"] + [n for n in names if n not in root_closure]
    return order, first, later, release


def build(modules: Path, busybox: Path, init: str = INIT, wanted: tuple[str, ...] = MODULES) -> bytes:
    """The initramfs image (uncompressed newc cpio) for a kernel's `modules` tree, with busybox and the shell `init`."""
    cpio = Cpio()
    _base(cpio)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in BUSYBOX_APPLETS:
        cpio.symlink(f"bin/{applet}", "busybox")
    _, first, later, _ = _add_modules(cpio, modules, wanted)
    init = init.replace("@ROOT_MODULES@", " ".join(first) or "-q virtiofs").replace("@LATER_MODULES@", " ".join(later) or "-q virtio_net")
    cpio.file("init", init.encode(), 0o755)
    return cpio.finish()


def build_native(modules: Path, init_binary: Path, wanted: tuple[str, ...] = MODULES) -> bytes:
    """The initramfs image for the native init (guest/init.c): the binary as /init, the modules and their
    load order in /lib/modules/posture.load (the root share's group, a line `--`, the rest); no busybox."""
    cpio = Cpio()
    _base(cpio)
    order, _, _, release = _add_modules(cpio, modules, wanted)
    listing = "".join("--\n" if n == "--" else f"/lib/modules/{release}/{n}.ko\n" for n in order)
    cpio.file("lib/modules/posture.load", listing.encode())
    cpio.file("init", init_binary.read_bytes(), 0o755)
    return cpio.finish()


def cached_native(dest_dir: Path, modules: Path, init_binary: Path, wanted: tuple[str, ...] = MODULES) -> Path:
    """The native init's initramfs for these inputs under `dest_dir`, built once and reused."""
    key = cache_key(modules, init_binary, "native", wanted)
    path = dest_dir / f"initrd-native-{key}.cpio"
    if not path.exists():
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(build_native(modules, init_binary, wanted))
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return path


def cache_key(modules: Path, busybox: Path, init: str, wanted: tuple[str, ...]) -> str:
    """A key that changes when anything that goes into the image changes."""
    h = hashlib.sha256()
    for p in (modules, busybox):
        st = p.stat()
        h.update(f"{p}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    h.update(init.encode())
    h.update(",".join(wanted).encode())
    h.update(",".join(BUSYBOX_APPLETS).encode())
    h.update(b"unsigned" if signatures_optional(modules) else b"signed")
    return h.hexdigest()[:16]


def cached(dest_dir: Path, modules: Path, busybox: Path, init: str | None = None, wanted: tuple[str, ...] = MODULES) -> Path:
    """The initramfs for these inputs under `dest_dir`, built once and reused."""
    init = INIT if init is None else init
    key = cache_key(modules, busybox, init, wanted)
    path = dest_dir / f"initrd-{key}.cpio"
    if not path.exists():
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(build(modules, busybox, init, wanted))
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return path
