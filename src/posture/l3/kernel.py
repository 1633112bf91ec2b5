"""Find a kernel (and its modules) for L3 guests, or fetch Debian's cloud kernel.

Order: the user config's `[l3] kernel`/`modules`; the host's own kernel when readable;
then what `posture setup --l3-kernel` unpacked into /var/lib/posture/l3 (world-readable, so
every user's sessions find it; root's data dir of older versions is still looked in). Packages are
fetched with `apt-get download` and unpacked with `dpkg-deb -x`, never installed.
The guest init needs a static busybox: the host's `/bin/busybox` when it is static, else
one unpacked from Debian's `busybox-static` the same way.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import Unavailable

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
SETUP_FIX = "run `sudo posture setup --l3-kernel` once (it unpacks Debian's cloud kernel into /var/lib/posture/l3), or set [l3] kernel and modules in the user config"
SYSTEM_ASSETS = Path("/var/lib/posture/l3")


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel image and the module tree built for it."""

    image: Path
    modules: Path  # .../lib/modules/<release>
    release: str
    source: str  # "config", "host" or "fetched"


def assets_dir() -> Path:
    """Where `posture setup --l3-kernel` puts fetched L3 assets: a system directory every user can read."""
    return Path(os.environ.get("POSTURE_L3_ASSETS") or SYSTEM_ASSETS)


def _asset_dirs() -> list[Path]:
    """Where fetched assets are looked for: the system directory, then the data dir older versions used."""
    out = [assets_dir()]
    try:
        legacy = paths.data_dir() / "l3"
    except RuntimeError:
        return out
    return out if legacy == out[0] else [*out, legacy]


def _release_of(modules: Path) -> str:
    return modules.name


def _fetched() -> Kernel | None:
    for base in _asset_dirs():
        root = base / "kernel"
        for image in sorted((root / "boot").glob("vmlinuz-*"), reverse=True):
            release = image.name[len("vmlinuz-"):]
            modules = root / "lib" / "modules" / release
            if modules.is_dir() and os.access(image, os.R_OK):
                return Kernel(image, modules, release, "fetched")
    return None


def fetched_dirs() -> list[Path]:
    """The directories holding fetched assets now (what `setup --remove --purge` deletes)."""
    return [d for d in _asset_dirs() if d.is_dir()]


def fetched_but_unreadable() -> Path | None:
    """A fetched kernel image this user cannot read (set up by an older version, in root's data dir), for doctor."""
    for base in (SYSTEM_ASSETS, Path("/root/.local/share/posture/l3")):
        try:
            images = sorted((base / "kernel" / "boot").glob("vmlinuz-*"))
        except OSError:
            return base
        for image in images:
            if not os.access(image, os.R_OK):
                return image
    return None


def _host() -> Kernel | None:
    release = platform.release()
    image = Path(f"/boot/vmlinuz-{release}")
    modules = Path(f"/lib/modules/{release}")
    if image.is_file() and os.access(image, os.R_OK) and modules.is_dir():
        return Kernel(image, modules, release, "host")
    return None


def find_kernel(l3: dict[str, Any]) -> Kernel:
    """The kernel to boot, per the order in the module docstring; Unavailable when there is none."""
    if l3.get("kernel"):
        image = Path(l3["kernel"])
        if not (image.is_file() and os.access(image, os.R_OK)):
            raise Unavailable(f"[l3] kernel {image} is not a readable file", fix="fix [l3] kernel in the user config")
        if not l3.get("modules"):
            raise Unavailable("[l3] kernel is set but [l3] modules is not", fix="set [l3] modules to the kernel's /lib/modules/<release> directory")
        modules = Path(l3["modules"])
        if not modules.is_dir():
            raise Unavailable(f"[l3] modules {modules} is not a directory", fix="point [l3] modules at /lib/modules/<release> of that kernel")
        return Kernel(image, modules, _release_of(modules), "config")
    found = _host() or _fetched()
    if found is None:
        raise Unavailable("no kernel for L3 guests (none readable in /boot, none fetched)", fix=SETUP_FIX)
    return found


def find_busybox() -> Path:
    """A statically linked busybox for the initramfs."""
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox"), *(d / "busybox" / "bin" / "busybox" for d in _asset_dirs())):
        if candidate.is_file() and _is_static(candidate):
            return candidate
    raise Unavailable("no static busybox for the L3 guest's init", fix=SETUP_FIX)


def _is_static(path: Path) -> bool:
    """True when the ELF file has no program interpreter (PT_INTERP)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            phoff = int.from_bytes(head[32:40], "little")
            phentsize = int.from_bytes(head[54:56], "little")
            phnum = int.from_bytes(head[56:58], "little")
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return False
    return all(int.from_bytes(table[i * phentsize:i * phentsize + 4], "little") != 3 for i in range(phnum))


# ---------------------------------------------------------------- fetching

def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"`{' '.join(argv)}` failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}", fix="check apt sources and network access to the Debian mirror")
    return proc.stdout


def _resolve_versioned(package: str) -> str:
    """`linux-image-cloud-amd64` is a metapackage: the versioned image it depends on."""
    out = _run(["apt-cache", "depends", package])
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    return package


def fetch_package(package: str, dest: Path) -> str:
    """`apt-get download` `package` and unpack it into `dest` (replaced); return the .deb name."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise Unavailable("apt-get and dpkg-deb are needed to fetch L3 assets", fix="set [l3] kernel and modules in the user config instead")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt's _apt user writes the download here
        _run(["apt-get", "download", "-q", package], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise Unavailable(f"apt-get download {package} produced no .deb", fix="check apt sources")
        unpacked = work / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
        for dirpath, dirs, files in os.walk(unpacked):  # every user boots it: readable by all
            for name in dirs:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in files:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    os.chmod(full, os.stat(full).st_mode & 0o7777 | 0o444)
        if dest.exists():
            shutil.rmtree(dest)
        os.chmod(unpacked, 0o755)
        unpacked.rename(dest)
        return debs[0].name


def fetch_kernel() -> list[str]:
    """Fetch and unpack Debian's cloud kernel (and a static busybox) into assets_dir()."""
    done = []
    assets_dir().mkdir(parents=True, exist_ok=True, mode=0o755)
    for d in (assets_dir().parent, assets_dir()):
        os.chmod(d, 0o755)
    versioned = _resolve_versioned(KERNEL_PACKAGE)
    deb = fetch_package(versioned, assets_dir() / "kernel")
    done.append(f"L3 kernel: unpacked {deb} into {assets_dir() / 'kernel'}")
    try:
        find_busybox()
    except Unavailable:
        deb = fetch_package(BUSYBOX_PACKAGE, assets_dir() / "busybox")
        done.append(f"L3 init: unpacked {deb} into {assets_dir() / 'busybox'}")
    return done
