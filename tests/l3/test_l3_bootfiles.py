"""The boot files posture makes for the L3 guest from the real kernel (no VM booted here; every other
L3 test boots them): the PVH vmlinux unpacked from the bzImage and the initramfs's modules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_native_initramfs_has_the_native_init_and_the_modules_in_load_order(tmp_path: Path) -> None:
    from posture.l3 import guestagent

    k = kernel.find_kernel({})
    init = guestagent.build_init(tmp_path)
    image = initramfs.build_native(k.modules, init)
    assert init.read_bytes() in image and b"bin/busybox" not in image  # one process boots the guest
    listing = re.search(rb"lib/modules/posture\.load\x00+([^\x00]*)", image)
    assert listing is not None
    names = [Path(line).stem for line in listing.group(1).decode().splitlines()]
    assert "--" in names
    first, later = names[:names.index("--")], names[names.index("--") + 1:]
    # dependencies before what needs them; what the root share needs before the share is mounted
    assert first.index("virtio_ring") < first.index("virtio_pci") and first.index("fuse") < first.index("virtiofs")
    assert "virtio_console" in later and "virtio_net" in later and not set(first) & set(later)


def test_both_inits_get_the_same_boot_steps() -> None:
    """The busybox script and the native init's file are two renderings of one plan (l3/guestboot.py)."""
    from posture.l3 import guestboot

    door = guestboot.Door("org.posture.gateway", "/run/ready", ("/usr/bin/python3", "-I", "/g/tunnel.pyc"))
    plan = guestboot.steps("/home/u", 1000, 1000, [("/g/rw/b/0", "/home/u/.cache", True, False), ("/g/rw/b/1", "/etc/x.conf", False, True),
                                                   ("/g/rw/project", "/home/u/p", True, False)],
                           [("/home/u/.local/bin/tool", "/opt/tool/bin/tool")], True, "org.posture.exec", door, False,
                           guestboot.Agent(("/g/agent",), (1000, 1000)), guestboot.Reaper(2048, "/usr/bin/python3"))
    fields = guestboot.steps_file(plan).split(b"\0")
    assert fields[-1] == b""  # every field ends with a NUL
    script = guestboot.shell_script(plan)
    # the home first, then each bind after its parent, the project among them; the agent last, as the user
    assert script.index("tmpfs $R/home/u ") < script.index("$R/home/u/.cache") < script.index("$R/home/u/p ")
    assert "mount -o remount,bind,ro $R/etc/x.conf" in script and "chown 1000:1000 $DEV" in script
    assert script.rstrip().endswith("exec switch_root $R /g/agent --device $DEV")
    ops = [f for f in fields if f in (b"mount", b"bind", b"link", b"door", b"exec", b"net", b"lo", b"channel")]
    assert ops.count(b"bind") == 3 and ops.count(b"link") == 1 and ops[-1] == b"exec" and b"net" in ops
    assert fields[-7:-1] == [b"exec", b"1", b"1000", b"1000", b"1", b"/g/agent"]
    # both start the inode reaper (after the door, before the agent) with the budget
    reaper = fields.index(b"reaper")
    assert fields[reaper + 1:reaper + 3] == [b"2048", b"0"] and fields.index(b"door") < reaper < fields.index(b"exec")
    assert "exec chroot $R /usr/bin/python3 -I -S -c 'import time\n" in script and "trigger, wait, told = 2048, 0.05, False\n" in script
    # the busybox init waits until the reaper is inside the new root, before switch_root moves that mount away
    assert script.index("drop_caches") < script.index("[ ! -d /proc/$REAPER/root/.posture-guest ]") < script.index("exec switch_root")
    with pytest.raises(ValueError):
        guestboot.steps_file([guestboot.Link("/a\0b", "/c")])


def test_inode_budget_is_a_quarter_of_the_descriptors_virtiofsd_may_hold() -> None:
    """virtiofsd holds a descriptor per inode the guest knows: the guest drops its unused ones at a quarter of that."""
    import subprocess
    import sys

    def budget(limit: int) -> int:
        out = subprocess.run(["prlimit", f"--nofile={limit}:{limit}", "--", sys.executable, "-c",
                              "from posture.l3 import virtiofs; print(virtiofs.inode_budget())"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    assert budget(8192) == 2048
    assert budget(100) == 256  # never below a floor the guest's own boot needs


def test_domain_puts_every_device_on_the_root_complex_and_boots_through_qboot() -> None:
    import xml.etree.ElementTree as ET

    from posture.errors import Unavailable
    from posture.l3 import domain

    qboot = domain.firmware("auto")
    assert qboot and Path(qboot).is_file()  # QEMU's qemu-system-data ships it (install-deps installs QEMU)
    assert domain.firmware("seabios") == ""
    spec = domain.DomainSpec(name="posture-x", kernel="/k", initrd="/i", accel="tcg", memory_mib=512, cpus=2, root_socket="/r.sock",
                             rw_socket="/w.sock", channel_socket="/c.chan", console_log="/c.log", network=True, door_socket="/d.chan",
                             firmware=qboot)
    tree = ET.fromstring(domain.xml(spec))
    assert tree.findtext("os/loader") == qboot and tree.find("os/loader").get("type") == "rom"
    devices = tree.find("devices")
    assert devices is not None
    pci = [d for d in devices if d.tag in ("filesystem", "interface") or (d.tag == "controller" and d.get("type") == "virtio-serial")]
    assert len(pci) == 4
    slots = set()
    for d in pci:  # each an integrated endpoint: libvirt adds no PCIe root port for it
        address = d.find("address")
        assert address is not None and address.get("bus") == "0x00", ET.tostring(d)
        slots.add(address.get("slot"))
    assert len(slots) == 4
    assert "loader" not in domain.xml(domain.DomainSpec(**{**spec.__dict__, "firmware": ""}))
    missing = domain.QBOOT_PATHS
    try:
        domain.QBOOT_PATHS = ("/nonexistent/qboot.rom",)
        assert domain.firmware("auto") == ""
        with pytest.raises(Unavailable, match="firmware"):
            domain.firmware("qboot")
    finally:
        domain.QBOOT_PATHS = missing
