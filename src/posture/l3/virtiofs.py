"""Export a View to an L3 guest over virtio-fs: stage it in a private mount namespace and serve it.

Two shares, each served by its own virtiofsd started by posture (libvirt takes the sockets):
- `root`: a read-only tree holding exactly the view's system paths and generated files,
  plus the guest's agent and per-session setup script under /.posture-guest;
- `rw`: the project (read-write, with the protected paths bound read-only and the denied
  ones hidden, all on the host side, so root in the guest cannot undo it) and every extra
  bind of the view (agent state read-write, credential files read-only) under b/N.
The guest's init mounts both and makes the binds; its /tmp and home are guest-local tmpfs.

Root stages in a private mount namespace and runs virtiofsd as root. An ordinary user
stages in a user namespace that maps only the user's uid and gid (stage.py) and runs
virtiofsd there as the user, under l3/fsfilter.py's seccomp filter: what the guest writes
in the project belongs to the user, and nobody in the guest can make a file on the host
that belongs to anyone else, or a setuid/setgid or device file.
"""

from __future__ import annotations

import grp
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import placeholders
from ..channel import GUEST_DIR as AGENT_SRC
from ..errors import Unavailable
from ..view import View
from . import guestboot
from .guestagent import GuestAgent

GUEST = guestboot.GUEST_DIR
VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
CHANNEL_NAME = "org.posture.exec"
STAGE_SCRIPT = Path(__file__).with_name("stage.py")


def find_virtiofsd() -> str:
    """Path of virtiofsd; Unavailable when missing."""
    for path in VIRTIOFSD_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise Unavailable("virtiofsd not found (looked in " + ", ".join(VIRTIOFSD_PATHS) + ")", fix="apt-get install qemu-system-x86 (Debian 12) or virtiofsd")


def _depth(path: str) -> int:
    return path.rstrip("/").count("/")


@dataclass
class Plan:
    """The staging ops (the guest's boot steps among them) and host placeholders made for protected paths."""

    ops: list[dict] = field(default_factory=list)
    wanted: list[tuple[str, bool]] = field(default_factory=list)  # placeholders to create: (path, is_dir)


GUEST_PYTHON = "/usr/bin/python3"  # the view's python, which runs the exec agent in the guest


def agent_pycs(cache: Path) -> dict[str, Path]:
    """The exec agent compiled by the guest's python, cached: the guest then skips compiling it."""
    return guest_pycs(cache, ("agent.py", "wire.py"))


def guest_pycs(cache: Path, sources: tuple[str, ...]) -> dict[str, Path]:
    """Guest programs (files of posture/guest) compiled by the guest's python into `cache`: {"name.pyc": path}."""
    import hashlib

    real = os.path.realpath(GUEST_PYTHON)
    h = hashlib.sha256(f"{real}:{os.stat(real).st_mtime_ns}".encode())
    for name in sources:
        h.update(name.encode() + b"\0" + (AGENT_SRC / name).read_bytes())
    out_dir = cache / f"guest-{h.hexdigest()[:16]}"
    names = {name[:-3] + ".pyc": out_dir / (name[:-3] + ".pyc") for name in sources}
    if all(p.exists() for p in names.values()):
        return names
    tmp = cache / f".guest-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    code = ("import py_compile, sys\n"
            "for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    py_compile.compile(src, cfile=dst, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n")
    args = [a for name in sources for a in (str(AGENT_SRC / name), str(tmp / (name[:-3] + ".pyc")))]
    proc = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"cannot compile the guest's {', '.join(sources)} with {GUEST_PYTHON}: {proc.stderr.strip()[-200:]}",
                          fix="install python3 (the guest runs the host's /usr/bin/python3)")
    for p in tmp.iterdir():
        p.chmod(0o644)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another session made it meanwhile
    return names


def inode_budget() -> int:
    """How many FUSE inodes the guest may keep: a quarter of the descriptors each virtiofsd may hold (stage.py
    raises its soft limit to this process's hard one; virtiofsd holds one per inode the guest knows). The
    rest is room for what is listed between two looks of the guest's reaper (guest/init.c)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    return max(256, hard // 4)


def plan(view: View, stage: Path, network: bool, agent: GuestAgent, stall: bool = False, as_user: bool = False,
         door: guestboot.Door | None = None, native_init: bool = False) -> Plan:
    """Translate `view` into staging ops under `stage` and the guest's boot steps (l3/guestboot.py): a steps
    file for the native init, else a setup script for the busybox one."""
    out = Plan()
    ops = out.ops
    root, rw = str(stage / "root"), str(stage / "rw")
    project = Path(view.project)

    # ---- root share: a tmpfs with mount points, the system paths bound read-only, generated files
    ops.append({"op": "tmpfs", "path": root, "size": "8m"})
    mountpoints = ["/proc", "/sys", "/dev", "/tmp", "/run", f"{GUEST}/rw", view.home, view.project]
    files = {b.target for b in view.binds if not _under(b.target, view.home) and os.path.isfile(b.source)}
    mountpoints += [b.target for b in view.binds if not _under(b.target, view.home)]
    for mp in sorted(set(mountpoints), key=_depth):
        if not any(_under(mp, s) for s in view.system_ro):
            ops.append({"op": "touch" if mp in files else "mkdir", "path": root + mp})
    tc = view.toolchains
    late_links = [(lp, lt) for lp, lt in tc.links if _under(lp, view.home) or _under(lp, "/run") or _under(lp, "/tmp")]
    for path, target in tc.links:  # links outside the guest's own tmpfs mounts live in the root share
        if (path, target) not in late_links and not any(_under(path, s) for s in view.system_ro):
            ops.append({"op": "symlink", "path": root + path, "target": target})
    for path in sorted(view.system_ro, key=_depth):
        if os.path.islink(path):
            ops.append({"op": "symlink", "path": root + path, "target": os.readlink(path)})
        elif os.path.isdir(path):
            ops += [{"op": "mkdir", "path": root + path}, {"op": "bind", "src": path, "dst": root + path, "ro": True}]
        elif os.path.exists(path):
            ops += [{"op": "touch", "path": root + path}, {"op": "bind", "src": path, "dst": root + path, "ro": True}]
    for target, data in view.files.items():
        ops.append({"op": "write", "path": root + target, "data": data, "mode": 0o644})
    for name, (src, mode) in agent.files.items():
        ops.append({"op": "copy", "src": str(src), "path": f"{root}{GUEST}/{name}", "mode": mode})
    if agent.kind == "python":
        # run by the initramfs in the background as soon as this share is mounted (see initramfs.INIT)
        warm = f"#!/bin/sh\nexec {GUEST_PYTHON} -I -S -c 'import sys; sys.path.insert(0, \"{GUEST}\"); import agent'\n"
        ops.append({"op": "write", "path": f"{root}{GUEST}/warm", "data": warm, "mode": 0o755})

    # ---- rw share: the project with its protected paths, and every extra bind
    ops.append({"op": "tmpfs", "path": rw, "size": "1m"})
    ops += [{"op": "mkdir", "path": f"{rw}/project"}, {"op": "bind", "src": view.project, "dst": f"{rw}/project", "ro": False}]
    ops += [{"op": "mkdir", "path": f"{rw}/empty"}, {"op": "touch", "path": f"{rw}/empty.file"}]
    points: list[str] = []
    for protected in view.protected:
        if not _under(protected, view.project):
            continue  # outside the project the guest cannot see it at all
        point, is_dir = placeholders.mount_point(view.project, protected)
        if os.path.islink(point):
            # a mount follows the link: protect what it names when that is inside the project
            real = os.path.realpath(point)
            if _under(real, view.project) and os.path.exists(real):
                point = real
            else:
                continue
        elif not os.path.lexists(point):
            out.wanted.append((point, is_dir))
        if point not in points:
            points.append(point)
    for point in sorted(points, key=_depth):
        rel = os.path.relpath(point, project)
        ops.append({"op": "bind", "src": f"{rw}/project/{rel}", "dst": f"{rw}/project/{rel}", "ro": True})
    for denied in view.denied:
        hidden = Path(denied)
        if not _under(denied, view.project) or not os.path.lexists(hidden) or hidden.is_symlink():
            continue
        rel = os.path.relpath(hidden, project)
        empty = f"{rw}/empty" if hidden.is_dir() else f"{rw}/empty.file"
        ops.append({"op": "bind", "src": empty, "dst": f"{rw}/project/{rel}", "ro": True})
    _file_mount_points(view)
    guest_binds: list[tuple[str, str, bool, bool]] = []  # (source in share, target, is_dir, ro)
    for i, b in enumerate(view.binds):
        if not os.path.exists(b.source):
            continue
        is_dir = os.path.isdir(b.source)
        dst = f"{rw}/b/{i}"
        ops.append({"op": "mkdir" if is_dir else "touch", "path": dst})
        ops.append({"op": "bind", "src": b.source, "dst": dst, "ro": not b.writable})
        for mask in tc.masks:  # credential files a toolchain tree holds: hidden on the host side
            if is_dir and mask != b.source and _under(mask, b.source) and os.path.lexists(mask):
                empty = f"{rw}/empty" if os.path.isdir(mask) else f"{rw}/empty.file"
                ops.append({"op": "bind", "src": empty, "dst": f"{dst}/{os.path.relpath(mask, b.source)}", "ro": True})
        guest_binds.append((f"{GUEST}/rw/b/{i}", b.target, is_dir, not b.writable))
    ops.append({"op": "remount_ro", "path": rw})

    # the home belongs to whoever runs the commands: the user, or guest root with [l3] guest_root
    huid, hgid = (view.uid, view.gid) if as_user or view.uid == 0 else (0, 0)
    guest_binds.append((f"{GUEST}/rw/project", view.project, True, False))
    boot = guestboot.steps(view.home, huid, hgid, guest_binds, late_links, network, CHANNEL_NAME, door, stall,
                           guestboot.Agent(tuple(agent.argv), (view.uid, view.gid) if as_user else None),
                           guestboot.Reaper(inode_budget(), GUEST_PYTHON,
                                            # test hook: the reaper starts after PID 1 has switched roots
                                            late_ms=500 if os.environ.get("POSTURE_FAULT_AT") == "l3-reaper-late" else 0))
    if native_init:
        ops.append({"op": "write", "path": f"{root}{GUEST}/boot.steps", "data": guestboot.steps_file(boot).decode(), "mode": 0o644})
    else:
        ops.append({"op": "write", "path": f"{root}{GUEST}/setup.sh", "data": guestboot.shell_script(boot), "mode": 0o755})
    ops.append({"op": "remount_ro", "path": root})
    return out


def _file_mount_points(view: View) -> None:
    """A file bound over a path inside a writable directory bind (a sentinel credential file in the agent's
    state dir) needs its mount point in that directory: made here, on the host, as the user (guest root
    could not create it through the user's virtiofsd); bwrap makes the same point at L2."""
    for b in view.binds:
        if not os.path.isfile(b.source):
            continue
        for outer in view.binds:
            if outer is b or not outer.writable or not os.path.isdir(outer.source) or not _under(b.target, outer.target):
                continue
            point = os.path.join(outer.source, os.path.relpath(b.target, outer.target))
            if not os.path.lexists(point) and os.path.isdir(os.path.dirname(point)):
                os.close(os.open(point, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


@dataclass
class Served:
    """The staging process and what it serves."""

    proc: subprocess.Popen
    sockets: dict[str, str]
    placeholders: list[str]
    registry: str


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


# capabilities (of the user namespace, so they count only for the user's own files) an ordinary
# user's virtiofsd starts with: chown, dac_override, fowner, setgid, setuid, setpcap (libcap-ng drops
# the bounding set with it; without it libcap-ng logs to syslog, which virtiofsd's own seccomp
# filter kills), sys_admin (its pid/mount/net sandbox); it removes mknod, setfcap, fsetid itself
USER_CAPS = (0, 1, 3, 6, 7, 8, 21)
USER_MODCAPS = "-mknod:-setfcap:-fsetid"


def serve(view: View, run_dir: Path, socket_group: int | None, network: bool, agent: GuestAgent,
          timeout: float = 10.0, stall: bool = False, user: tuple[int, int] | None = None, door: guestboot.Door | None = None,
          native_init: bool = False) -> Served:
    """Stage `view` and start one virtiofsd per share; return once both sockets exist.

    `user` (uid, gid): stage and serve as that ordinary user (see the module docstring); `door`: the
    boot step that opens the gateway's door (l3/door.py); `native_init`: the guest boots with guest/init.c."""
    virtiofsd = find_virtiofsd()
    stage = run_dir / "stage"
    for sub in ("root", "rw"):
        (stage / sub).mkdir(parents=True, exist_ok=True)
    p = plan(view, stage, network, agent, stall, as_user=agent.uid is not None, door=door, native_init=native_init)
    group_args = []
    if socket_group is not None:
        try:
            group_args = [f"--socket-group={grp.getgrgid(socket_group).gr_name}"]
        except KeyError:
            group_args = []
    sockets = {"root": str(run_dir / "root.sock"), "rw": str(run_dir / "rw.sock")}
    for s in sockets.values():
        Path(s).unlink(missing_ok=True)
    daemons = []
    for share, cache in (("root", "always"), ("rw", "auto")):
        common = ["-o", f"source={stage / share}", "-o", f"cache={cache}", "-o", "log_level=warn", "-o", "no_posix_lock",
                  "-o", "no_xattr", "--thread-pool-size=0"]  # no GLib pool: its threads die by virtiofsd's own seccomp (sched_getaffinity)
        if user is None:
            daemons.append({"argv": [virtiofsd, f"--socket-path={sockets[share]}", *group_args, *common],
                            "socket": sockets[share], "log": str(run_dir / f"virtiofsd-{share}.log")})
        else:  # stage.py makes the listening socket (mode 0600) and passes it with --fd
            daemons.append({"argv": [virtiofsd, *common, "-o", f"modcaps={USER_MODCAPS}"], "listen": sockets[share],
                            "socket": sockets[share], "log": str(run_dir / f"virtiofsd-{share}.log")})
    doc: dict = {"ops": p.ops, "daemons": daemons}
    if user is not None:
        from . import fsfilter

        bpf = run_dir / "virtiofsd.bpf"
        bpf.write_bytes(fsfilter.build())
        doc.update({"userns": {"uid": user[0], "gid": user[1]}, "filter": str(bpf), "caps": list(USER_CAPS)})
    spec = run_dir / "stage.json"
    spec.write_text(json.dumps(doc))
    registry = placeholders.registry_for(Path(view.project))
    held = placeholders.acquire(registry, view.session, p.wanted) if p.wanted else []
    err = open(run_dir / "stage.log", "wb")
    wrap = [] if user is not None else ["unshare", "-m", "--propagation", "private", "--"]
    proc = subprocess.Popen(
        [*wrap, sys.executable, "-I", "-S", str(STAGE_SCRIPT), str(spec)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, preexec_fn=_die_with_parent, close_fds=True,
    )
    err.close()
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else b""
    if line != b"ready":
        proc.kill()
        proc.wait()
        detail = (run_dir / "stage.log").read_text(errors="replace").strip().splitlines()
        from ..session import release_placeholders

        release_placeholders(registry, view.session)
        raise Unavailable(f"staging the view for virtio-fs failed: {detail[-1] if detail else 'no output'}", fix=f"see {run_dir}/stage.log and virtiofsd-*.log")
    for s in sockets.values():
        if socket_group is not None:
            os.chmod(s, 0o660)
    return Served(proc, sockets, held, registry)


class Watch:
    """Calls `gone()` once if the staging process (and so a virtiofsd) exits before `close()`: a guest whose
    file server is gone hangs in every file access, so the session must end rather than wait for ever."""

    def __init__(self, proc: subprocess.Popen, gone: Callable[[], None]) -> None:
        self.pidfd = os.pidfd_open(proc.pid)
        self.quit_r, self.quit_w = os.pipe2(os.O_CLOEXEC)
        self.gone = gone
        self.thread = threading.Thread(target=self._run, name="virtiofsd-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ready, _, _ = select.select([self.pidfd, self.quit_r], [], [])
        if self.quit_r not in ready:
            self.gone()

    def close(self) -> None:
        """Stop watching (before the session stops the staging process itself)."""
        os.write(self.quit_w, b"q")
        self.thread.join(timeout=5)
        for fd in (self.pidfd, self.quit_r, self.quit_w):
            os.close(fd)


def stop(proc: subprocess.Popen | None, pid: int | None = None) -> None:
    """Stop the staging process (and with it both virtiofsd)."""
    if proc is not None:
        pid = proc.pid
    if not pid:
        return
    if proc is None:
        # from another process: only signal it if that pid is still our staging process (pids get reused)
        try:
            if STAGE_SCRIPT.name.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return
        except OSError:
            return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait()
