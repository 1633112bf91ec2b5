"""The L3 guest's boot after its two shares are mounted: planned once here, performed by either init.

The steps: the guest's own mounts (/proc, /sys, /dev, tmpfs for /tmp, /run and the home), the
view's binds from the rw share, toolchain links, the loopback (and eth0 in mode public), the
exec channel, the gateway's door, and last the exec agent in the new root, as the user. Two
inits perform them, from one list:

- the native init (guest/init.c, built with the native agent's compiler) reads them from
  /.posture-guest/boot.steps as NUL-terminated fields (`steps_file`) and makes system calls:
  one process for the whole boot;
- the busybox init (initramfs.INIT, with the Python agent) sources them as a shell script,
  /.posture-guest/setup.sh (`shell_script`): one busybox process per mount, about 10 ms each
  under TCG, which is why the native one exists.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

GUEST_IP, GUEST_GW = "10.0.2.15/24", "10.0.2.2"  # QEMU user-mode networking's defaults
GUEST_IP6, GUEST_GW6 = "fec0::15/64", "fec0::2"


@dataclass(frozen=True)
class Mount:
    """mount -t FSTYPE -o OPTS SOURCE TARGET (TARGET made first when `make`; a failure reported when `report`)."""

    source: str
    target: str
    fstype: str
    opts: str
    make: bool = False
    report: bool = False


@dataclass(frozen=True)
class Bind:
    """A bind of `source` (a path in the guest, usually in the rw share) over `target`, read-only when `ro`."""

    source: str
    target: str
    is_dir: bool
    ro: bool


@dataclass(frozen=True)
class Link:
    """A symlink at `path` to `target`, replacing what is there (ln -sfn)."""

    path: str
    target: str


GUEST_DIR = "/.posture-guest"  # the guest's own files, in the new root (the root share)


@dataclass(frozen=True)
class Door:
    """Start the gateway door's guest end (`argv`, in the new root; `--device PORT` appended) and wait for `ready`."""

    port: str
    ready: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Reaper:
    """Keep the guest's FUSE inodes below `budget` (each is a descriptor virtiofsd holds: virtiofs.inode_budget)
    by dropping the unused dentries and inodes, from a child that stays guest root. The native init forks it; the busybox init
    starts it in `python` (shell builtins cannot parse /proc/slabinfo cheaply, and a `sleep` from the share
    would not load just when the share is exhausted; a running interpreter needs nothing more from it) and
    waits until it is in the new root: switch_root moves that mount away, and a chroot by path that ran after
    it would find nothing there. `late_ms` (test hook): the child starts that much later."""

    budget: int
    python: str
    late_ms: int = 0


@dataclass(frozen=True)
class Agent:
    """Switch into the new root and run `argv` as PID 1 with `--device DEV` appended. `run_as` (uid, gid):
    the exec channel is given to the user; the native init also becomes the user first (the busybox
    init's `argv` starts with a dropper that does, l3/guestuser.py)."""

    argv: tuple[str, ...]
    run_as: tuple[int, int] | None


Step = Mount | Bind | Link | Door | Reaper | Agent | tuple[str, ...]
# tuples: ("mark", LABEL), ("lo",), ("net",), ("channel", NAME), ("stall",)


def steps(home: str, uid: int, gid: int, binds: list[tuple[str, str, bool, bool]], links: list[tuple[str, str]],
          network: bool, channel: str, door: Door | None, stall: bool, agent: Agent, reaper: Reaper) -> list[Step]:
    """The session's boot steps. `binds`: (source in the guest, target, is_dir, ro), the project's among them;
    `home` is a tmpfs owned by `uid`:`gid`."""
    out: list[Step] = [
        Mount("proc", "/proc", "proc", "nosuid,nodev,noexec"),
        Mount("sys", "/sys", "sysfs", "nosuid,nodev,noexec"),
        Mount("dev", "/dev", "devtmpfs", "nosuid"),
        Mount("devpts", "/dev/pts", "devpts", "nosuid,noexec,gid=5,mode=620,ptmxmode=666", make=True),
        Mount("tmpfs", "/dev/shm", "tmpfs", "nosuid,nodev,mode=1777", make=True),
        Mount("tmpfs", "/tmp", "tmpfs", "nosuid,nodev,mode=1777"),
        Mount("tmpfs", "/run", "tmpfs", "nosuid,nodev,mode=755"),
        ("mark", "setup"),
    ]
    # the home may lie below a tmpfs mounted above (a home under /tmp): each mount after its parents
    mounts: list[tuple[str, Step]] = [(home, Mount("tmpfs", home, "tmpfs", f"nosuid,nodev,mode=700,uid={uid},gid={gid}", make=True, report=True))]
    mounts += [(target, Bind(src, target, is_dir, ro)) for src, target, is_dir, ro in binds]
    mounts += [(path, Link(path, target)) for path, target in links]
    out += [step for _, step in sorted(mounts, key=lambda m: _depth(m[0]))]
    out += [("mark", "mounted"), ("lo",)]
    if network:
        out.append(("net",))
    out += [("channel", channel), ("mark", "channel")]
    if door is not None:
        out.append(door)
    out.append(reaper)
    if stall:
        out.append(("stall",))
    out.append(agent)
    return out


def _depth(path: str) -> int:
    return path.rstrip("/").count("/")


# ---------------------------------------------------------------- the native init's file

def steps_file(plan: list[Step]) -> bytes:
    """`plan` as guest/init.c reads it: every field NUL-terminated, each step its operation's name first."""
    fields: list[str] = []
    for s in plan:
        if isinstance(s, Mount):
            fields += ["mount", s.source, s.target, s.fstype, s.opts, str(int(s.make))]  # the native init reports every failure
        elif isinstance(s, Bind):
            fields += ["bind", s.source, s.target, str(int(s.is_dir)), str(int(s.ro))]
        elif isinstance(s, Link):
            fields += ["link", s.path, s.target]
        elif isinstance(s, Door):
            fields += ["door", s.port, s.ready, str(len(s.argv)), *s.argv]
        elif isinstance(s, Reaper):
            fields += ["reaper", str(s.budget), str(s.late_ms)]
        elif isinstance(s, Agent):
            uid, gid = s.run_as if s.run_as is not None else (0, 0)
            fields += ["exec", str(int(s.run_as is not None)), str(uid), str(gid), str(len(s.argv)), *s.argv]
        elif s[0] == "net":
            fields += ["net", "eth0", GUEST_IP, GUEST_GW, GUEST_IP6, GUEST_GW6]
        else:
            fields += list(s)
    if any("\0" in f for f in fields):
        raise ValueError("a boot step holds a NUL byte")
    return b"".join(f.encode() + b"\0" for f in fields)


# ---------------------------------------------------------------- the busybox init's script

def _text(path: str) -> str:
    """`path` safe inside a double-quoted shell string."""
    return "".join(c if c.isalnum() or c in "/._-+@%," else "?" for c in path)


def _mark(label: str) -> str:
    return f'read -r up _ < /proc/uptime; echo "posture-t: {label} $up"'  # the shell's own read: no fork


def shell_script(plan: list[Step]) -> str:
    """`plan` as a script the busybox init sources (it sets nothing but R=/newroot first)."""
    q = shlex.quote
    lines = ["# generated by posture for this session; sourced by the initramfs init", "R=/newroot"]
    for s in plan:
        if isinstance(s, Mount):
            cmd = f"mount -t {s.fstype} -o {s.opts} {s.source} $R{q(s.target)}"
            if s.make:
                cmd = f"mkdir -p $R{q(s.target)} 2>/dev/null; {cmd}"
            lines.append(cmd + (f' || echo "posture-init: mount failed: {_text(s.target)}"' if s.report else ""))
        elif isinstance(s, Bind):
            t = q(s.target)
            # a file's mount point may already be in the read-only root share: made only when missing
            make = f"mkdir -p $R{t}" if s.is_dir else f"mkdir -p $R{q(os.path.dirname(s.target))} && {{ [ -e $R{t} ] || touch $R{t}; }}"
            cmd = f"{make} && mount -o bind $R{q(s.source)} $R{t}" + (f" && mount -o remount,bind,ro $R{t}" if s.ro else "")
            lines.append(cmd + f' || echo "posture-init: mount failed: {_text(s.target)}"')
        elif isinstance(s, Link):
            lines.append(f"mkdir -p $R{q(os.path.dirname(s.path))} && ln -sfn {q(s.target)} $R{q(s.path)}"
                         f' || echo "posture-init: mount failed: {_text(s.path)}"')
        elif isinstance(s, Door):
            lines += _shell_door(s)
        elif isinstance(s, Reaper):
            lines += _shell_reaper(s)
        elif isinstance(s, Agent):
            if s.run_as is not None:
                lines.append(f"chown {s.run_as[0]}:{s.run_as[1]} $DEV")
            lines.append(f'[ -x $R{q(s.argv[0])} ] || echo "posture-init: {_text(s.argv[0])} is missing from the view"')
            lines.append(f"exec switch_root $R {' '.join(q(a) for a in s.argv)} --device $DEV")
        elif s[0] == "mark":
            lines.append(_mark(s[1]))
        elif s[0] == "lo":
            lines.append("ip link set lo up")
        elif s[0] == "net":
            lines += [
                f"ip link set eth0 up 2>/dev/null && ip addr add {GUEST_IP} dev eth0 && ip route add default via {GUEST_GW}",
                f"ip -6 addr add {GUEST_IP6} dev eth0 nodad 2>/dev/null && ip -6 route add default via {GUEST_GW6} 2>/dev/null",
            ]
        elif s[0] == "channel":
            lines += _shell_port("DEV", s[1], wait=True) + ['[ -n "$DEV" ] || echo "posture-init: no exec channel"']
        elif s[0] == "stall":
            lines.append('echo "posture-init: stalled on purpose (test hook)"; sleep 100000')
        else:
            raise ValueError(f"unknown boot step {s!r}")
    return "\n".join(lines) + "\n"


_REAPER_PY = """import time
try:
    open("/proc/self/comm", "w").write("posture-reaper")
except OSError:
    pass
def fuse_inodes():
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("fuse_inode "):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1
trigger, wait, told = BUDGET, 0.05, False
while True:
    time.sleep(wait)
    n, wait = fuse_inodes(), 0.05
    if n < 0 and not told:
        print("posture-init: the inode reaper cannot read fuse_inode in /proc/slabinfo; trying again", flush=True)
        told = True
    if n < 0:
        wait = 1.0
    if n <= trigger:
        continue
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError as exc:
        if not told:
            print(f"posture-init: the inode reaper cannot drop caches: {exc.strerror}; trying again", flush=True)
        told, wait = True, 1.0
        continue
    after = fuse_inodes()
    trigger = min(max(BUDGET, after + BUDGET // 4), 2 * BUDGET)
    if after > BUDGET:
        wait = 0.25
"""


def _shell_reaper(r: Reaper) -> list[str]:
    """Start the reaper in the background and wait (up to 2 s) until it is inside the new root."""
    code = shlex.quote(_REAPER_PY.replace("BUDGET", str(int(r.budget))))
    late = f"usleep {int(r.late_ms) * 1000}; " if r.late_ms else ""
    return [
        f"( {late}exec chroot $R {shlex.quote(r.python)} -I -S -c {code} ) </dev/null >/dev/console 2>&1 &",
        "REAPER=$!; i=0",
        f"while [ $i -lt 400 ] && [ ! -d /proc/$REAPER/root{GUEST_DIR} ]; do usleep 5000; i=$((i + 1)); done",
        f'[ -d /proc/$REAPER/root{GUEST_DIR} ] || echo "posture-init: the inode reaper did not start"',
    ]


def _shell_port(var: str, name: str, wait: bool) -> list[str]:
    """Lines that set $var to the virtio port named `name` (polling up to 2 s when `wait`)."""
    find = [
        "  for p in /sys/class/virtio-ports/*; do",
        f"    n=; read -r n < $p/name 2>/dev/null; [ \"$n\" = {shlex.quote(name)} ] && {var}=/dev/${{p##*/}}",
        "  done",
    ]
    if not wait:
        return [f"{var}=", *[line[2:] for line in find]]
    return [f"{var}=", "i=0", "while [ $i -lt 200 ]; do", *find,  # shell builtins only: every fork costs milliseconds under TCG
            f"  [ -n \"${var}\" ] && [ -e \"${var}\" ] && break", "  usleep 10000; i=$((i + 1))", "done"]


def _shell_door(d: Door) -> list[str]:
    q = shlex.quote
    start = f"chroot $R {' '.join(q(a) for a in d.argv)} --device $GWDEV </dev/null >/dev/null 2>&1 &"
    return [
        *_shell_port("GWDEV", d.port, wait=False),
        "if [ -n \"$GWDEV\" ]; then",
        f"  {start}",
        f"  i=0; while [ $i -lt 3000 ] && [ ! -e $R{q(d.ready)} ]; do usleep 10000; i=$((i + 1)); done",
        f'  [ -e $R{q(d.ready)} ] || echo "posture-init: the gateway door did not open"',
        "else",
        '  echo "posture-init: no gateway channel"',
        "fi",
        _mark("door"),
    ]
