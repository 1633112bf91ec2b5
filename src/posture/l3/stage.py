"""Stage a view for virtio-fs and serve it: run inside a private mount namespace.

Standard library only, run as a script:
    unshare -m --propagation private -- python3 -I -S stage.py SPEC.json

SPEC is {"ops": [...], "daemons": [...]}. Each op is one of
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
import signal
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(src, dst, fstype, flags, data=None):
    if libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(), flags, data and data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} -> {dst}: {os.strerror(err)}")


def die_with_parent():
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    elif kind == "remount_ro":
        mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    else:
        raise ValueError(f"unknown op {kind}")


def main():
    die_with_parent()
    if os.getppid() == 1:
        sys.exit(1)
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    for op in spec["ops"]:
        try:
            apply(op)
        except OSError as exc:
            print(f"stage: {op['op']} {op.get('path') or op.get('dst')}: {exc.strerror}", file=sys.stderr, flush=True)
            sys.exit(70)
    children = []
    for daemon in spec["daemons"]:
        log = os.open(daemon["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        pid = os.fork()
        if pid == 0:
            try:
                die_with_parent()
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.execv(daemon["argv"][0], daemon["argv"])
            finally:
                os._exit(127)
        os.close(log)
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
