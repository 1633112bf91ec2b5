"""The guest kernel as QEMU boots it fastest: the uncompressed ELF `vmlinux` with its PVH entry.

A bzImage passed to `-kernel` goes through SeaBIOS's linuxboot option ROM, real mode and the
kernel's own decompressor, all emulated instruction by instruction under TCG (about a
second here). QEMU starts an ELF kernel that carries a PVH entry note
(XEN_ELFNOTE_PHYS32_ENTRY, CONFIG_PVH) directly in 32-bit mode with its initrd, so posture
unpacks the bzImage's payload once (cached with the kernel) and boots that. Same kernel
code; what is lost is only the decompressor's own work, such as its KASLR choice of
address (guest-internal hardening; every L3 promise is kept on the host side). When the
image is not a bzImage, its payload format is unknown here or it has no PVH entry, the
bzImage itself is used, as before.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

VERSION = "pvh1"  # in the cached file's name: bump when what write_boot_image makes changes
PHYS32_ENTRY = 18  # XEN_ELFNOTE_PHYS32_ENTRY
PT_NOTE = 4
# payload magic -> decompressor (bytes -> bytes)
_TOOLS = {b"\x02\x21\x4c\x18": ["lz4", "-dc"], b"\x28\xb5\x2f\xfd": ["zstd", "-dc"], b"BZh": ["bzip2", "-dc"],
          b"\x89LZO": ["lzop", "-dc"]}


def _tool(argv: list[str], data: bytes) -> bytes | None:
    if shutil.which(argv[0]) is None:
        return None
    # the legacy lz4 frame (the kernel's) ends without an end mark: lz4 may exit non-zero after a full output
    return subprocess.run(argv, input=data, capture_output=True).stdout or None


def _decompress(payload: bytes) -> bytes | None:
    if payload[:2] == b"\x1f\x8b":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload[:3] == b"\x5d\x00\x00":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
    for magic, argv in _TOOLS.items():
        if payload.startswith(magic):
            return _tool(argv, payload)
    return None


def payload_of(bzimage: bytes) -> bytes | None:
    """The compressed kernel inside a bzImage (boot protocol 2.08+), else None."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        return None
    setup_sects = bzimage[0x1f1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    return bzimage[start:start + length] if length and start + length <= len(bzimage) else None


def has_pvh_entry(elf: bytes) -> bool:
    """True for a 64-bit little-endian ELF with a PHYS32_ENTRY note in a PT_NOTE segment."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _v, _p, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", elf, pos)
            if kind == PHYS32_ENTRY and elf[pos + 12:pos + 12 + namesz].rstrip(b"\0") == b"Xen":
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def vmlinux(image: Path) -> bytes | None:
    """The PVH-bootable ELF inside the bzImage `image`, or None when there is none to use."""
    data = image.read_bytes()
    payload = payload_of(data)
    try:
        elf = _decompress(payload) if payload else None
    except (lzma.LZMAError, zlib.error, OSError):
        return None
    return elf if elf and has_pvh_entry(elf) else None


def write_boot_image(image: Path, dest: Path) -> None:
    """Write what QEMU should boot for the kernel `image` to `dest`: its PVH vmlinux, else the image itself."""
    elf = vmlinux(image)
    if elf is None:
        shutil.copyfile(image, dest)
    else:
        dest.write_bytes(elf)
