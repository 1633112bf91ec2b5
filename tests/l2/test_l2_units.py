"""Small, fast checks of the L2 pieces that need no root: the seccomp program, nft parsing,
the cgroup v2 mount lookup, placeholders and the bwrap argument builder."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from posture import placeholders
from posture.l2 import argv as bwrap
from posture.l2 import seccomp
from posture.netd import cgroups, nft

pytestmark = [pytest.mark.l2]


def test_seccomp_program_checks_arch_first_and_masks_ioctl() -> None:
    prog = seccomp.build("x86_64")
    assert len(prog) % 8 == 0 and len(prog) // 8 < 4096
    insns = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert insns[0] == (seccomp.LD_W_ABS, 0, 0, 4)  # load the arch field first
    assert insns[1][0] == seccomp.JEQ_K and insns[1][3] == 0xC000003E
    # the ioctl request is loaded from the low 32 bits of argument 1 and compared to TIOCSTI
    loads = [i for i, ins in enumerate(insns) if ins[0] == seccomp.LD_W_ABS and ins[3] == 24]
    assert loads and insns[loads[0] + 1][3] == seccomp.TIOCSTI
    assert seccomp.build("aarch64")
    with pytest.raises(RuntimeError):
        seccomp.build("sparc")


DEBUG = """inet t @blocked4
\telement 0000000b  : 1 [end]
\telement 0000000a  : 0 [end]
inet t @blocked6
inet t output 7
  [ socket load cgroupv2 => reg 1 ]
  [ cmp eq reg 1 0x0000008b 0x00000001 ]
  [ immediate reg 0 jump -> sessions ]

inet t output 9 7
  [ socket load cgroupv2 => reg 1 ]
  [ cmp eq reg 1 0x0000008b 0x00000001 ]
  [ payload load 4b @ network header + 16 => reg 1 ]
  [ lookup reg 1 set blocked4 0x0 ]
  [ reject type 0 code 3 ]
"""


def test_nft_debug_output_gives_the_stored_cgroup_ids() -> None:
    chains, sets = nft.parse_debug(DEBUG)
    assert chains["output"] == [[0x1_0000008B], [0x1_0000008B]]
    assert sets == {"blocked4": 2, "blocked6": 0}


def test_ruleset_matches_the_cgroup_at_its_level() -> None:
    text = nft.ruleset("posture", "unified/posture/net", 2, ["10.0.0.0/8", "fc00::/7"], ["10.255.255.53"])
    assert text.count('socket cgroupv2 level 2 "unified/posture/net"') == nft.BASE_RULES
    assert "elements = { 10.255.255.53/32 }" in text


def test_v2_mount_hybrid_and_pure(tmp_path: Path) -> None:
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    pure = tmp_path / "pure"
    pure.write_text("30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroups.v2_mount(str(hybrid)) == Path("/sys/fs/cgroup/unified")
    assert cgroups.v2_mount(str(pure)) == Path("/sys/fs/cgroup")
    assert cgroups.nft_path("posture/net", Path("/sys/fs/cgroup/unified")) == "unified/posture/net"
    assert cgroups.nft_path("posture/net", Path("/sys/fs/cgroup")) == "posture/net"
    assert cgroups.level("posture/net") == 2


def test_placeholders_use_the_highest_missing_ancestor_and_clean_up(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / ".git" / "hooks").mkdir(parents=True)
    assert placeholders.mount_point(str(project), str(project / ".claude" / "settings.json")) == (str(project / ".claude"), True)
    assert placeholders.mount_point(str(project), str(project / ".envrc")) == (str(project / ".envrc"), False)
    assert placeholders.mount_point(str(project), str(project / ".git" / "hooks")) == (str(project / ".git" / "hooks"), True)
    registry = str(tmp_path / "state" / "placeholders.json")
    wanted = [(str(project / ".envrc"), False), (str(project / ".vscode"), True)]
    held_a = placeholders.acquire(registry, "a", wanted)
    held_b = placeholders.acquire(registry, "b", wanted)
    assert held_a == held_b == [p for p, _ in wanted]
    assert placeholders.release(registry, "a", lambda: {"b"}) == []  # b still holds them
    assert (project / ".envrc").exists()
    (project / ".vscode" / "mine.json").parent.mkdir(exist_ok=True)
    (project / ".vscode" / "mine.json").write_text("{}")  # the user put something there meanwhile
    assert placeholders.release(registry, "b", lambda: set()) == [str(project / ".envrc")]
    assert not (project / ".envrc").exists() and (project / ".vscode" / "mine.json").exists()


def test_system_symlinks_stay_links_when_their_target_is_in_view(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "resolv").write_text("x")
    os.symlink("usr/bin", tmp_path / "bin")
    os.symlink(str(tmp_path / "run" / "resolv"), tmp_path / "resolv.conf")
    args = bwrap.system_args([str(tmp_path / "usr"), str(tmp_path / "bin"), str(tmp_path / "resolv.conf")], skip=set())
    assert ["--symlink", "usr/bin", str(tmp_path / "bin")] == args[3:6]
    assert ["--ro-bind", str(tmp_path / "run" / "resolv"), str(tmp_path / "resolv.conf")] == args[6:9]
