"""A seccomp BPF filter for L2 sandboxes, built in Python and handed to bwrap (`--seccomp FD`).

Denied (EPERM unless noted): TIOCSTI and TIOCLINUX ioctls (the request compared on its
low 32 bits, as the kernel does), clone/unshare with CLONE_NEWUSER, clone3 (ENOSYS, so
libc falls back to clone, whose flags can be checked), the new mount API (fsopen,
fsconfig, fsmount, fspick, move_mount, open_tree, mount_setattr) and mount, umount2,
pivot_root, keyctl, add_key, request_key, ptrace, process_vm_readv/writev. System calls
of any other architecture (i386 on x86_64) and x32 system calls fail with ENOSYS.
"""

from __future__ import annotations

import errno
import os
import struct

# BPF opcodes
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

OFF_NR, OFF_ARCH = 0, 4


def _arg_lo(n: int) -> int:
    """Offset of the low 32 bits of argument `n` in struct seccomp_data (little-endian)."""
    return 16 + 8 * n


CLONE_NEWUSER = 0x10000000
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

# arch -> (AUDIT_ARCH value, syscall numbers, x32 bit or 0)
ARCHES: dict[str, tuple[int, dict[str, int], int]] = {
    "x86_64": (0xC000003E, {
        "ioctl": 16, "clone": 56, "unshare": 272, "clone3": 435, "ptrace": 101,
        "keyctl": 250, "add_key": 248, "request_key": 249,
        "process_vm_readv": 310, "process_vm_writev": 311,
        "mount": 165, "umount2": 166, "pivot_root": 155,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442,
    }, 0x40000000),
    "aarch64": (0xC00000B7, {
        "ioctl": 29, "clone": 220, "unshare": 97, "clone3": 435, "ptrace": 117,
        "keyctl": 219, "add_key": 217, "request_key": 218,
        "process_vm_readv": 270, "process_vm_writev": 271,
        "mount": 40, "umount2": 39, "pivot_root": 41,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442,
    }, 0),
}
DENIED = (
    "ptrace", "keyctl", "add_key", "request_key", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
)


class _Asm:
    """A tiny assembler: forward jumps to labels, resolved at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = b""
        for pc, (code, jt, jf, k) in enumerate(self.code):
            def rel(target: object, pc: int = pc) -> int:
                if isinstance(target, int):
                    return target
                dist = self.labels[str(target)] - pc - 1
                if not 0 <= dist <= 255:
                    raise ValueError(f"jump to {target} out of range")
                return dist
            out += struct.pack("=HBBI", code, rel(jt), rel(jf), k & 0xFFFFFFFF)
        return out


def build(machine: str | None = None) -> bytes:
    """The filter as raw `struct sock_filter` records for this machine's architecture."""
    machine = machine or os.uname().machine  # what platform.machine() returns here, without importing platform
    if machine not in ARCHES:
        raise RuntimeError(f"no seccomp filter for architecture {machine}")
    audit_arch, nr, x32 = ARCHES[machine]
    a = _Asm()
    a.op(LD_W_ABS, OFF_ARCH)
    a.op(JEQ_K, audit_arch, 0, "enosys")
    a.op(LD_W_ABS, OFF_NR)
    if x32:
        a.op(JGE_K, x32, "enosys", 0)
    a.op(JEQ_K, nr["ioctl"], "ioctl", 0)
    a.op(JEQ_K, nr["clone"], "clone", 0)
    a.op(JEQ_K, nr["unshare"], "clone", 0)
    a.op(JEQ_K, nr["clone3"], "enosys", 0)
    for name in DENIED:
        a.op(JEQ_K, nr[name], "eperm", 0)
    a.op(RET_K, RET_ALLOW)
    a.label("ioctl")
    a.op(LD_W_ABS, _arg_lo(1))  # the request: only its low 32 bits count
    a.op(JEQ_K, TIOCSTI, "eperm", 0)
    a.op(JEQ_K, TIOCLINUX, "eperm", 0)
    a.op(RET_K, RET_ALLOW)
    a.label("clone")
    # clone(flags, ...) on both arches; unshare(flags): the flags are argument 0.
    a.op(LD_W_ABS, _arg_lo(0))
    a.op(JSET_K, CLONE_NEWUSER, "eperm", 0)
    a.op(RET_K, RET_ALLOW)
    a.label("eperm")
    a.op(RET_K, RET_ERRNO | errno.EPERM)
    a.label("enosys")
    a.op(RET_K, RET_ERRNO | errno.ENOSYS)
    return a.assemble()
