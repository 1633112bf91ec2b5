"""Stage a view for virtio-fs and serve it: run inside a private mount namespace.

Standard library only, run as a script:
    unshare -m --propagation private -- python3 -I -S stage.py SPEC.json     (root)
    python3 -I -S stage.py SPEC.json                                         (an ordinary user)

With "userns": {"uid", "gid"} in SPEC (the ordinary user), this process first enters a
user namespace of its own mapping exactly that uid and gid to themselves (nothing else is
mapped: no root, no other user) and a private mount namespace owned by it. Each virtiofsd
then runs as the user with the namespace's capabilities (raised as ambient capabilities,
so they count only for the user's own files), on a listening socket made here (`--fd`),
under the seccomp filter in SPEC's "filter" file (see l3/fsfilter.py): it can create files
only as the user, chown them to no one else, and never set setuid/setgid bits.

SPEC is {"ops": [...], "daemons": [...], "userns"?: {...}, "filter"?: path, "caps"?: [n, ...]}. Each op is one of
    {"op": "tmpfs", "path", "size"}            a fresh tmpfs
    {"op": "mkdir", "path"}                    a directory (and parents)
    {"op": "touch", "path"}                    an empty file (parents made)
    {"op": "symlink", "path", "target"}
    {"op": "write", "path", "data", "mode"}
    {"op": "copy", "src", "path", "mode"?}     a file's bytes (mode 0644 unless given)
    {"op": "bind", "src", "dst", "ro"}         a recursive bind mount, remounted read-only when ro
    {"op": "remount_ro", "path"}
Then every daemon (argv, socket) is started with this process as its parent; "ready" is
printed once every socket exists. When one daemon ends, the others are stopped and this
process exits; all of them die with the process that started this one.
"""

import ctypes
import ctypes.util
import json
import os
import resource
import signal
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
LOCKED = 2 | 4 | 8 | 1024 | 2048 | 4096  # nosuid nodev noexec noatime nodiratime relatime: kept on a remount in a user namespace
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 1, 22, 47, 2
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
USER_MODE = {"on": False}  # binds get nosuid,nodev too

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(src, dst, fstype, flags, data=None):
    if libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(), flags, data and data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} -> {dst}: {os.strerror(err)}")


def die_with_parent():
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _locked(path):
    """The flags of the mount at `path` that a remount must keep (statvfs's ST_* equal the MS_* values)."""
    return os.statvfs(path).f_flag & LOCKED


def enter_userns(uid, gid):
    """A user namespace mapping only `uid` and `gid` to themselves, and a private mount namespace in it."""
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWUSER|CLONE_NEWNS): {os.strerror(err)}")
    for name, data in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1\n"), ("gid_map", f"{gid} {gid} 1\n")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(data)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    USER_MODE["on"] = True


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def ambient(caps):
    """Keep `caps` (capability numbers, of this user namespace) across execve as ambient capabilities."""
    head, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(head), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for cap in caps:
        data[cap // 32].inheritable |= 1 << (cap % 32)
    if libc.capset(ctypes.byref(head), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    for cap in caps:
        if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"ambient capability {cap}")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_filter(path):
    """Install the seccomp BPF program in `path` (this process and what it execs)."""
    with open(path, "rb") as fh:
        code = fh.read()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.addressof(buf))
    if libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter")


def raise_nofile():
    """virtiofsd holds a descriptor per inode the guest knows: its soft limit up to the hard one (what
    virtiofs.inode_budget assumes)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listen(path):
    """A listening unix socket at `path` (mode 0600) for virtiofsd's --fd."""
    import socket

    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(1)
    return sock


def apply(op):
    kind = op["op"]
    path = op.get("path") or op.get("dst")
    if kind == "tmpfs":
        os.makedirs(path, exist_ok=True)
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={op.get('size', '16m')}")
    elif kind == "mkdir":
        os.makedirs(path, exist_ok=True)
    elif kind == "touch":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.lexists(path):
            open(path, "a").close()
    elif kind == "symlink":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(op["target"], path)
    elif kind == "write":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(op["data"])
        os.chmod(path, int(op.get("mode", 0o644)))
    elif kind == "copy":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(op["src"], "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        os.chmod(path, int(op.get("mode", 0o644)))
    elif kind == "bind":
        mount(op["src"], path, None, MS_BIND | MS_REC)
        if op.get("ro"):
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | _locked(path))
        elif USER_MODE["on"]:
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | _locked(path))
    elif kind == "remount_ro":
        mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | _locked(path))
    else:
        raise ValueError(f"unknown op {kind}")


def main():
    die_with_parent()
    if os.getppid() == 1:
        sys.exit(1)
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    if spec.get("userns"):
        try:
            enter_userns(int(spec["userns"]["uid"]), int(spec["userns"]["gid"]))
        except OSError as exc:
            print(f"stage: user namespace: {exc.strerror}", file=sys.stderr, flush=True)
            sys.exit(69)
    for op in spec["ops"]:
        try:
            apply(op)
        except OSError as exc:
            print(f"stage: {op['op']} {op.get('path') or op.get('dst')}: {exc.strerror}", file=sys.stderr, flush=True)
            sys.exit(70)
    children = []
    for daemon in spec["daemons"]:
        log = os.open(daemon["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        listener = listen(daemon["listen"]) if daemon.get("listen") else None
        argv = list(daemon["argv"]) + ([f"--fd={listener.fileno()}"] if listener else [])
        pid = os.fork()
        if pid == 0:
            try:
                die_with_parent()
                os.dup2(log, 1)
                os.dup2(log, 2)
                if listener is not None:
                    os.set_inheritable(listener.fileno(), True)
                raise_nofile()
                if spec.get("caps"):
                    ambient(spec["caps"])
                if spec.get("filter"):
                    load_filter(spec["filter"])
                os.execv(argv[0], argv)
            except OSError as exc:
                os.write(2, f"stage: starting {argv[0]}: {exc}\n".encode())
            finally:
                os._exit(127)
        os.close(log)
        if listener is not None:
            listener.close()
        children.append(pid)
    deadline = time.monotonic() + 10
    while not all(os.path.exists(d["socket"]) for d in spec["daemons"]):
        done, _ = os.waitpid(-1, os.WNOHANG)
        if done or time.monotonic() > deadline:
            print("stage: virtiofsd did not start", file=sys.stderr, flush=True)
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sys.exit(69)
        time.sleep(0.002)
    print("ready", flush=True)

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        os.waitpid(-1, 0)
    except (ChildProcessError, SystemExit):
        pass
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    sys.exit(0)


if __name__ == "__main__":
    main()
