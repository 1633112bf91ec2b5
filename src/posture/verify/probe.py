"""Runs INSIDE a session and tries to break every promise; prints one JSON report.

The one probe program: the tests run it in L2 and L3 sessions, `posture verify` runs it at
every level. Standard library only (it runs on the system python3 inside the session, or
on the L4 host). Usage:
    python3 probe.py '<json config>'      or      python3 -c "$(cat probe.py)" '<json config>'
Config keys (all optional but home/project): canary, canaries (more needles), secret, home,
project, creds (paths), unix (host socket paths), abstract (abstract socket names), blocked
(addr list), blocked_ports (addr:port pairs), public (addr list), port, targets (more
addr:port pairs), timeout, protected (project-relative paths), scan_roots (where to look for
the canaries; default every top-level directory), scan_skip (directories not to walk),
kernel (false: skip the syscall and user-namespace checks, which are about the session's own
kernel), gentle (true: leave no trace: protected paths are opened for writing but never
written, the only project write is the marker named in project_marker, which the caller
checks on the host and removes; no git commit). Every check records what happened; the
caller decides.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import platform
import pty
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Iterator

libc = ctypes.CDLL(None, use_errno=True)
SYSCALLS = {
    "x86_64": {"keyctl": 250, "add_key": 248, "ptrace": 101, "process_vm_readv": 310, "fsopen": 430, "open_tree": 428,
               "mount_setattr": 442, "fsmount": 432, "move_mount": 429, "fspick": 433, "unshare": 272, "clone3": 435},
    "aarch64": {"keyctl": 219, "add_key": 217, "ptrace": 117, "process_vm_readv": 270, "fsopen": 430, "open_tree": 428,
                "mount_setattr": 442, "fsmount": 432, "move_mount": 429, "fspick": 433, "unshare": 97, "clone3": 435},
}
SYS = SYSCALLS.get(platform.machine(), {})
CLONE_NEWUSER = 0x10000000
GREETING_WAIT = 1.0  # a connected server that says nothing (TLS, DNS) is still reached


def errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__


def outcome(fn) -> str:
    """'ok' or the errno name / exception of calling fn()."""
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errname(exc)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def syscall(name: str, *args: int | bytes) -> str:
    if name not in SYS:
        return "unknown-arch"
    ctypes.set_errno(0)
    conv = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    rc = libc.syscall(ctypes.c_long(SYS[name]), *conv)
    if rc == -1:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return "ok"


def scan_roots(roots: list[str] | None) -> list[tuple[str, bool]]:
    """(directory, read contents?) for each distinct real directory to walk: a top-level symlink (merged /usr's
    /bin, /lib, /sbin) is walked once, as its target, and anything in /usr by name only."""
    if roots is None:
        roots = ["/" + top for top in os.listdir("/") if top not in ("proc", "sys", "dev")]
    real = sorted({os.path.realpath(os.path.expanduser(base)) for base in roots})
    out = []
    for base in real:
        if any(base != other and base.startswith(other.rstrip("/") + "/") for other in real):
            continue  # inside another root: walked with it
        out.append((base, not (base == "/usr" or base.startswith("/usr/"))))
    return out


EXHAUSTED = (errno.EMFILE, errno.ENFILE)  # descriptors run out for a moment (an L3 guest's file server, until
EXHAUSTED_WAIT = 3.0                     # the guest's reaper drops its inodes): the listing is tried again


def _retry(fn, path: str):
    """fn(path), tried again for EXHAUSTED_WAIT seconds while it fails because descriptors are exhausted."""
    deadline = time.monotonic() + EXHAUSTED_WAIT
    while True:
        try:
            return fn(path)
        except OSError as exc:
            if exc.errno not in EXHAUSTED or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _listing(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return list(it)


def _contents(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _walk(top: str, failed) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk's top-down walk without following links, each listing tried again (`_retry`) when
    descriptors are exhausted; what still fails goes to `failed`."""
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            entries = _retry(_listing, path)
        except OSError as exc:
            failed(exc)
            continue
        dirs: list[str] = []
        files: list[str] = []
        for entry in entries:
            try:
                (dirs if entry.is_dir(follow_symlinks=False) else files).append(entry.name)
            except OSError:
                files.append(entry.name)
        yield path, dirs, files
        stack.extend(os.path.join(path, d) for d in reversed(dirs))


def find_canaries(needles: list[str], roots: list[str] | None, skip: list[str],
                  errors: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Paths whose name or content holds each needle (/proc, /sys, /dev and `skip` skipped; /usr by name only).
    What could not be listed or read is recorded in `errors` (errno name: paths), so a caller can tell a clean
    scan from an incomplete one."""
    hits: dict[str, list[str]] = {n: [] for n in needles}
    raw = [(n, n.encode()) for n in needles]
    errors = {} if errors is None else errors

    def failed(exc: OSError) -> None:
        errors.setdefault(errname(exc), []).append(exc.filename or "?")

    for base, contents in scan_roots(roots):
        if base in skip:
            continue
        for dirpath, dirs, files in _walk(base, failed):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
            for name in files + dirs:
                for needle, _ in raw:
                    if needle in name:
                        hits[needle].append(os.path.join(dirpath, name))
            if not contents:
                continue
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_size > 4 << 20:
                        continue  # links, fifos (an open would wait for a writer for ever), sockets, devices, large files
                    data = _retry(_contents, path)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENXIO, errno.EOPNOTSUPP):  # gone, or a socket / fifo
                        failed(exc)
                    continue
                for needle, b in raw:
                    if b in data:
                        hits[needle].append(path)
    return hits


def environ_hits(secret: str) -> list[str]:
    hits = [f"env:{k}" for k, v in os.environ.items() if secret in v or secret in k]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if secret.encode() in fh.read():
                        hits.append(f"/proc/{pid}/environ")
            except OSError:
                continue
    return hits


def tiocsti(fd: int) -> dict[str, str]:
    return {
        "plain": outcome(lambda: fcntl.ioctl(fd, termios.TIOCSTI, b"#")),
        "high_bits": outcome(lambda: fcntl.ioctl(fd, (1 << 32) | termios.TIOCSTI, b"#")),
        "tioclinux": outcome(lambda: fcntl.ioctl(fd, 0x541C, b"\x06")),
    }


def own_pty() -> dict[str, str]:
    """TIOCSTI on a terminal the probe opens itself (works under pipes too); TIOCGWINSZ is the control."""
    try:
        master, slave = pty.openpty()
    except OSError as exc:
        return {"open": errname(exc)}
    try:
        result = {"open": "ok", "control": outcome(lambda: fcntl.ioctl(slave, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0)))}
        result.update(tiocsti(slave))
        return result
    finally:
        os.close(slave)
        os.close(master)


def connect(addr: str, port: int, timeout: float) -> str:
    """'ok:<greeting>' once connected (an empty greeting when the server says nothing), else why not."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
    except TimeoutError:
        s.close()
        return "timeout"
    except OSError as exc:
        s.close()
        return errno.errorcode.get(exc.errno, str(exc)) if exc.errno else str(exc)
    try:
        s.settimeout(min(timeout, GREETING_WAIT))
        return "ok:" + s.recv(64).decode(errors="replace").strip()
    except OSError:
        return "ok:"
    finally:
        s.close()


def unix_connect(path: str) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc)) if exc.errno else str(exc)
    finally:
        s.close()


def write_file(path: str) -> str:
    def go() -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as fh:
            fh.write("echo pwned\n")
    return outcome(go)


def try_write(path: str) -> str:
    """Whether `path` could be changed, leaving no trace: an existing file is opened for appending
    and closed unwritten; in a directory, and in place of a missing path, a file is created and removed."""
    tag = f"posture-verify-{uuid.uuid4().hex[:8]}"
    if os.path.isdir(path) and not os.path.islink(path):
        target, made = os.path.join(path, tag), True
    elif os.path.lexists(path):
        target, made = path, False
    else:
        target, made = path, True
    flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_EXCL if made else 0)
    try:
        fd = os.open(target, flags, 0o600)
    except OSError as exc:
        return errname(exc)
    os.close(fd)
    if made:
        try:
            os.unlink(target)
        except OSError:
            pass
    return "ok"


def network(cfg: dict) -> dict[str, str]:
    net: dict[str, str] = {}
    threads = []
    port = cfg.get("port", 0)
    targets = [(a, port) for a in cfg.get("blocked", []) + cfg.get("public", [])]
    targets += [(a, int(p)) for a, p in cfg.get("blocked_ports", []) + cfg.get("targets", [])]

    def go(addr: str, port: int) -> None:
        net[f"{addr}:{port}"] = connect(addr, port, cfg.get("timeout", 3))
    for addr, port in dict.fromkeys(targets):
        t = threading.Thread(target=go, args=(addr, port))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return net


def kernel_checks(r: dict) -> None:
    tried = {str(fd): tiocsti(fd) for fd in (0, 1, 2) if os.isatty(fd)}
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
        r["dev_tty"] = "ok"
        tried["/dev/tty"] = tiocsti(tty)
        os.close(tty)
    except OSError as exc:
        r["dev_tty"] = errname(exc)
    r["tiocsti"] = tried
    r["tiocsti_own_pty"] = own_pty()
    r["userns"] = {
        "unshare": outcome(lambda: _check(libc.unshare(CLONE_NEWUSER))),
        "unshare_raw": syscall("unshare", CLONE_NEWUSER),
        "clone3": syscall("clone3", 0, 0),
        "unshare_cmd": subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode,
    }
    r["keyctl"] = syscall("keyctl", 0, -3, 0)  # KEYCTL_GET_KEYRING_ID, session keyring
    r["add_key"] = syscall("add_key", b"user", b"posture-probe", b"x", 1, -3)
    r["ptrace"] = syscall("ptrace", 16, 1, 0, 0)  # PTRACE_ATTACH to pid 1
    r["process_vm_readv"] = syscall("process_vm_readv", 1, 0, 0, 0, 0, 0)
    r["fsopen"] = syscall("fsopen", b"tmpfs", 0)
    r["open_tree"] = syscall("open_tree", -100, b"/", 1)
    r["mount_setattr"] = syscall("mount_setattr", -100, b"/", 0, 0, 0)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    home, project = os.path.expanduser(cfg["home"]), cfg["project"]
    gentle = bool(cfg.get("gentle"))
    r: dict[str, object] = {}
    r["uid"] = os.getuid()
    r["creds"] = {p: outcome(lambda p=p: os.stat(os.path.expanduser(p))) for p in cfg.get("creds", [])}
    r["env_hits"] = environ_hits(cfg["secret"]) if cfg.get("secret") else []
    if cfg.get("agent_secret"):  # the agent's own credential (planted outside): only its sentinel may be inside
        r["agent_env_hits"] = environ_hits(cfg["agent_secret"])
        value = os.environ.get(cfg.get("agent_var") or "", "")
        r["agent_var_inside"] = "absent" if not value else "same shape" if len(value) == len(cfg["agent_secret"]) else "other"
    r["fds"] = sorted(int(f) for f in os.listdir("/proc/self/fd") if int(f) > 2 and os.path.exists(f"/proc/self/fd/{f}") and os.readlink(f"/proc/self/fd/{f}") != f"/proc/{os.getpid()}/fd")
    r["fd_targets"] = {f: os.readlink(f"/proc/self/fd/{f}") for f in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{f}")}
    r["isatty"] = [os.isatty(0), os.isatty(1), os.isatty(2)]
    r["dev_pts"] = sorted(os.listdir("/dev/pts")) if os.path.isdir("/dev/pts") else []
    if cfg.get("kernel", True):
        kernel_checks(r)
    r["unix"] = {p: unix_connect(p) for p in cfg.get("unix", [])}
    r["abstract"] = {n: unix_connect("\0" + n) for n in cfg.get("abstract", [])}
    protected = cfg.get("protected", [])
    if gentle:
        r["protected_writes"] = {rel: try_write(os.path.join(project, rel)) for rel in protected}
        marker = cfg.get("project_marker")
        if marker:  # the caller checks it arrived on the host, and removes it
            r["project_write"] = outcome(lambda: open(os.path.join(project, marker), "w").write("made inside\n"))
    else:
        r["bashrc"] = write_file(os.path.join(home, ".bashrc"))
        r["protected_writes"] = {rel: write_file(os.path.join(project, rel)) for rel in protected}
        r["project_write"] = outcome(lambda: open(os.path.join(project, "from-sandbox.txt"), "w").write("made inside\n"))
        r["git_commit"] = subprocess.run(
            ["sh", "-c", "git add from-sandbox.txt && git commit -qm 'from the sandbox' && git log --oneline -1"],
            cwd=project, capture_output=True, text=True,
        ).returncode
    r["net"] = network(cfg)
    needles = [n for n in [cfg.get("canary"), *cfg.get("canaries", [])] if n]
    scan_errors: dict[str, list[str]] = {}
    found = find_canaries(needles, cfg.get("scan_roots"), [os.path.abspath(os.path.expanduser(p)) for p in cfg.get("scan_skip", [])],
                          scan_errors)
    r["scan_errors"] = {name: {"count": len(paths), "first": paths[:5]} for name, paths in scan_errors.items()}
    r["canary_hits"] = found.get(cfg["canary"], []) if cfg.get("canary") else []
    r["canaries_found"] = found
    projects = os.path.join(home, ".claude", "projects")
    r["agent_state"] = sorted(os.listdir(projects)) if os.path.isdir(projects) else None
    print("PROBE-RESULT:" + json.dumps(r), flush=True)


def _check(rc: int) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


if __name__ == "__main__":
    main()
