"""Choose the guest accelerator: KVM when it works here, else TCG; remember the answer.

`/dev/kvm` can exist and still not boot a guest (nested virtualisation on some hosts
hangs at boot), so posture boots the real kernel once with a trivial init under KVM with
a bounded wait, and falls back to TCG when it does not answer. The result is kept in
posture's state dir, keyed by kernel, QEMU and host kernel, so the probe runs once.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from .. import paths
from . import initramfs
from .kernel import Kernel, find_busybox

QEMU = "/usr/bin/qemu-system-x86_64"
PROBE_TIMEOUT = 15.0
MARK = b"posture-probe-ok"


def cache_file() -> Path:
    """Where the probe's result is remembered."""
    return paths.state_dir() / "l3-accel.json"


def _key(kernel: Kernel) -> str:
    try:
        qemu = os.stat(QEMU).st_mtime_ns
    except OSError:
        qemu = 0
    return f"{kernel.image}:{kernel.release}:{qemu}:{platform.release()}"


def remembered(kernel: Kernel) -> dict | None:
    """The remembered probe result for `kernel`, if any."""
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("key") == _key(kernel) else None


def kvm_present() -> bool:
    """True when /dev/kvm can be opened."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def trivial_initrd(dest_dir: Path, kernel: Kernel) -> Path:
    """A cached initramfs whose init prints a marker and powers off (no modules)."""
    return initramfs.cached(dest_dir, kernel.modules, find_busybox(), initramfs.TRIVIAL_INIT, ())


def boot_argv(kernel: Kernel, initrd: Path, accel: str, memory_mib: int = 256) -> list[str]:
    """A bare QEMU direct boot of `kernel` with `initrd`, console on stdout."""
    return [
        QEMU, "-M", "q35", "-accel", accel, "-m", str(memory_mib), "-nodefaults", "-no-user-config",
        "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel.image), "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet loglevel=1 panic=-1",
    ] + (["-cpu", "host"] if accel == "kvm" else [])


def probe_boot(kernel: Kernel, accel: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, float]:
    """Boot the trivial init under `accel`; (answered within `timeout`, seconds taken)."""
    with tempfile.TemporaryDirectory() as tmp:
        initrd = trivial_initrd(Path(tmp), kernel)
        start = time.monotonic()
        proc = subprocess.Popen(boot_argv(kernel, initrd, accel), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return False, time.monotonic() - start
        return MARK in out, time.monotonic() - start


def choose(kernel: Kernel, wanted: str = "auto") -> tuple[str, str]:
    """(accelerator, why): `wanted` kvm/tcg is obeyed; auto probes KVM once and remembers."""
    if wanted in ("kvm", "tcg"):
        return wanted, f"set by [l3] accel = {wanted}"
    if not kvm_present():
        return "tcg", "/dev/kvm is not usable"
    known = remembered(kernel)
    if known is None:
        ok, took = probe_boot(kernel, "kvm")
        known = {"key": _key(kernel), "kvm_works": ok, "seconds": round(took, 2), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        paths.ensure_private_dir(cache_file().parent)
        cache_file().write_text(json.dumps(known))
    if known["kvm_works"]:
        return "kvm", "KVM boots guests here"
    return "tcg", f"/dev/kvm exists but a KVM guest did not boot within {PROBE_TIMEOUT:.0f}s (probed {known['when']}); using TCG"
