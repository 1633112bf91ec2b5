"""The seccomp filter virtiofsd runs under for an ordinary user's L3 session (built here, loaded by stage.py).

What the guest asks virtiofsd for becomes its system calls on the host, so the filter
decides what guest root can leave behind in the user's files:

  * chmod/fchmod/fchmodat, and open/openat/creat/mkdir/mkdirat/mknod/mknodat creating
    something, fail with EPERM when the mode asks for setuid or setgid bits, and
    mknod/mknodat fail for character and block devices (the user namespace refuses
    those anyway);
  * setxattr and friends fail with EPERM (no file capabilities, no ACLs: virtiofsd runs
    with xattrs off, this holds if it did not);
  * openat2 and fchmodat2, whose modes a filter cannot read, fail with ENOSYS (callers
    fall back to the calls above);
  * setgroups returns 0 without doing anything: virtiofsd drops supplementary groups at
    start, which a user namespace whose gid map an ordinary user wrote must refuse
    (`setgroups() failed`); the process keeps exactly the user's own groups, which only
    ever grant what the user has.

Ownership needs no rule: the user namespace maps only the user's uid and gid, so a
chown (or a create as any other uid) to anyone else fails with EINVAL in the kernel.
Other architectures get no filter (ordinary-user L3 is refused there).
"""

from __future__ import annotations

import errno
import platform
import struct

LD_W_ABS, JEQ_K, JSET_K, RET_K, ALU_AND_K, LD_A_FROM_X = 0x20, 0x15, 0x45, 0x06, 0x54, 0x87
RET_ALLOW, RET_ERRNO, RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
AUDIT_ARCH_X86_64, X32_BIT = 0xC000003E, 0x40000000
S_ISUID_GID, S_IFMT, S_IFCHR, S_IFBLK = 0o6000, 0o170000, 0o020000, 0o060000
O_CREAT = 0o100

# x86_64 numbers: name -> (syscall, index of the mode argument, the mode argument matters only with O_CREAT in arg N)
MODE_CALLS = {
    "chmod": (90, 1, None), "fchmod": (91, 1, None), "fchmodat": (268, 2, None),
    "open": (2, 2, 1), "openat": (257, 3, 2), "creat": (85, 1, None),
    "mkdir": (83, 1, None), "mkdirat": (258, 2, None),
    "mknod": (133, 1, None), "mknodat": (259, 2, None),
}
DENY = {"setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199}
NOSYS = {"openat2": 437, "fchmodat2": 452}
NOOP = {"setgroups": 116}


def _arg(n: int) -> int:
    return 16 + 8 * n  # low 32 bits of argument n in struct seccomp_data


class _Prog:
    def __init__(self) -> None:
        self.code: list[tuple[int, int, int, int]] = []

    def op(self, code: int, k: int, jt: int = 0, jf: int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def bytes(self) -> bytes:
        return b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in self.code)


def build() -> bytes:
    """The filter as a BPF program (struct sock_filter[]), for x86_64."""
    if platform.machine() != "x86_64":
        raise OSError(errno.ENOSYS, "the virtiofsd filter is built for x86_64 only")
    p = _Prog()
    eperm, nosys = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
    p.op(LD_W_ABS, 4)
    p.op(JEQ_K, AUDIT_ARCH_X86_64, 1, 0)
    p.op(RET_K, RET_KILL)
    p.op(LD_W_ABS, 0)
    p.op(JSET_K, X32_BIT, 0, 1)
    p.op(RET_K, nosys)
    for table, verdict in ((DENY, eperm), (NOSYS, nosys), (NOOP, RET_ERRNO | 0)):
        for nr in table.values():
            p.op(JEQ_K, nr, 0, 1)
            p.op(RET_K, verdict)
    for name, (nr, mode_arg, creat_arg) in MODE_CALLS.items():
        block: list[tuple[int, int, int, int]] = []
        # each block starts with A = nr loaded; it ends by reloading nr for the next block
        sub = _Prog()
        if creat_arg is not None:
            sub.op(LD_W_ABS, _arg(creat_arg))
            sub.op(JSET_K, O_CREAT, 0, 0)  # patched below: no O_CREAT -> allow
        sub.op(LD_W_ABS, _arg(mode_arg))
        sub.op(JSET_K, S_ISUID_GID, 0, 1)
        sub.op(RET_K, eperm)
        if name in ("mknod", "mknodat"):
            sub.op(ALU_AND_K, S_IFMT)
            sub.op(JEQ_K, S_IFCHR, 1, 0)
            sub.op(JEQ_K, S_IFBLK, 0, 1)
            sub.op(RET_K, eperm)
        sub.op(RET_K, RET_ALLOW)
        if creat_arg is not None:
            c, _jt, _jf, k = sub.code[1]
            sub.code[1] = (c, 0, len(sub.code) - 3, k)  # no O_CREAT: jump to the final allow
        block = sub.code
        p.op(JEQ_K, nr, 0, len(block))
        p.code.extend(block)
    p.op(RET_K, RET_ALLOW)
    return p.bytes()
