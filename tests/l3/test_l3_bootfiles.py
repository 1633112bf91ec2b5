"""The boot files posture makes for the L3 guest from the real kernel (no VM booted here; every other
L3 test boots them): the PVH vmlinux unpacked from the bzImage and the initramfs's modules."""

from __future__ import annotations

import re
from pathlib import Path

from posture.l3 import initramfs, kernel, pvh


def test_bzimage_is_unpacked_to_a_pvh_vmlinux_and_anything_else_is_copied(tmp_path: Path) -> None:
    k = kernel.find_kernel({})
    out = tmp_path / "kernel"
    pvh.write_boot_image(k.image, out)
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF" and pvh.has_pvh_entry(data)
    assert len(data) > k.image.stat().st_size  # uncompressed
    other = tmp_path / "not-a-bzimage"
    other.write_bytes(b"\x7fELF" + b"\0" * 100)
    pvh.write_boot_image(other, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == other.read_bytes()


def test_initramfs_loads_modules_by_modprobe_with_their_dependencies() -> None:
    k = kernel.find_kernel({})
    image = initramfs.build(k.modules, kernel.find_busybox())
    dep = re.search(rb"virtio_net\.ko: ([^\n]*)\n", image)
    assert dep is not None and b"virtio_ring.ko" in dep.group(1)
    assert b"\nmodprobe -a virtio_pci virtiofs ||" in image and b"@ROOT_MODULES@" not in image and b"@LATER_MODULES@" not in image
    signed = sum(blob.endswith(initramfs.SIG_MAGIC) for _n, blob in initramfs.resolve_modules(k.modules))
    if initramfs.signatures_optional(k.modules):
        assert signed and initramfs.SIG_MAGIC not in image  # stripped, the guest skips the checks
    else:
        assert signed == 0 or initramfs.SIG_MAGIC in image
