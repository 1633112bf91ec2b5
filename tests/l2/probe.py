"""Runs INSIDE an L2 sandbox and tries to break every promise; prints one JSON report.

Standard library only (it runs on the system python3 inside the sandbox). Usage:
    python3 probe.py '<json config>'
Config keys: canary, secret, home, project, creds (paths: posture's one credential list,
src/posture/credentials.py, as planted by l2env.CREDS; the probe cannot import posture), unix (host socket paths),
abstract (abstract socket names), blocked (addr list), blocked_ports (addr:port list),
public (addr list), port. Every check records what happened; the test decides.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
import termios
import threading

libc = ctypes.CDLL(None, use_errno=True)
SYS = {"keyctl": 250, "add_key": 248, "ptrace": 101, "process_vm_readv": 310, "fsopen": 430, "open_tree": 428,
       "mount_setattr": 442, "fsmount": 432, "move_mount": 429, "fspick": 433, "unshare": 272, "clone3": 435}
CLONE_NEWUSER = 0x10000000


def outcome(fn) -> str:
    """'ok' or the errno name / exception of calling fn()."""
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def syscall(name: str, *args: int | bytes) -> str:
    ctypes.set_errno(0)
    conv = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    rc = libc.syscall(ctypes.c_long(SYS[name]), *conv)
    if rc == -1:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return "ok"


def find_canary(canary: str) -> list[str]:
    hits = []
    needle = canary.encode()
    for top in os.listdir("/"):
        base = "/" + top
        if top in ("proc", "sys", "dev"):
            continue
        contents = top not in ("usr",)  # /usr: file names only (it is large and comes from the OS)
        for dirpath, dirs, files in os.walk(base, onerror=lambda e: None):
            for name in files + dirs:
                if canary in name:
                    hits.append(os.path.join(dirpath, name))
            if not contents:
                continue
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.islink(path) or os.path.getsize(path) > 4 << 20:
                        continue
                    with open(path, "rb") as fh:
                        if needle in fh.read():
                            hits.append(path)
                except OSError:
                    continue
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


def connect(addr: str, port: int, timeout: float) -> str:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        data = s.recv(64).decode(errors="replace").strip()
        return "ok:" + data
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc)) if exc.errno else str(exc)
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


def main() -> None:
    cfg = json.loads(sys.argv[1])
    home, project = cfg["home"], cfg["project"]
    r: dict[str, object] = {}
    r["uid"] = os.getuid()
    r["creds"] = {p: outcome(lambda p=p: os.stat(p)) for p in cfg["creds"]}
    r["env_hits"] = environ_hits(cfg["secret"])
    r["fds"] = sorted(int(f) for f in os.listdir("/proc/self/fd") if int(f) > 2 and os.path.exists(f"/proc/self/fd/{f}") and os.readlink(f"/proc/self/fd/{f}") != f"/proc/{os.getpid()}/fd")
    r["fd_targets"] = {f: os.readlink(f"/proc/self/fd/{f}") for f in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{f}")}
    r["isatty"] = [os.isatty(0), os.isatty(1), os.isatty(2)]
    r["tiocsti"] = {str(fd): tiocsti(fd) for fd in (0, 1, 2) if os.isatty(fd)}
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
        r["dev_tty"] = "ok"
        r["tiocsti"]["/dev/tty"] = tiocsti(tty)
        os.close(tty)
    except OSError as exc:
        r["dev_tty"] = errno.errorcode.get(exc.errno, str(exc.errno))
    r["dev_pts"] = sorted(os.listdir("/dev/pts")) if os.path.isdir("/dev/pts") else []
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
    r["unix"] = {p: unix_connect(p) for p in cfg["unix"]}
    r["abstract"] = {n: unix_connect("\0" + n) for n in cfg["abstract"]}
    r["bashrc"] = write_file(os.path.join(home, ".bashrc"))
    r["protected_writes"] = {rel: write_file(os.path.join(project, rel)) for rel in cfg["protected"]}
    r["project_write"] = outcome(lambda: open(os.path.join(project, "from-sandbox.txt"), "w").write("made inside\n"))
    r["git_commit"] = subprocess.run(
        ["sh", "-c", "git add from-sandbox.txt && git commit -qm 'from the sandbox' && git log --oneline -1"],
        cwd=project, capture_output=True, text=True,
    ).returncode
    net: dict[str, str] = {}
    threads = []
    targets = [(a, cfg["port"]) for a in cfg["blocked"] + cfg["public"]] + [tuple(x) for x in cfg["blocked_ports"]]

    def go(addr: str, port: int) -> None:
        net[f"{addr}:{port}"] = connect(addr, port, cfg.get("timeout", 3))
    for addr, port in targets:
        t = threading.Thread(target=go, args=(addr, port))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    r["net"] = net
    r["canary_hits"] = find_canary(cfg["canary"])
    r["agent_state"] = sorted(os.listdir(os.path.join(home, ".claude", "projects"))) if os.path.isdir(os.path.join(home, ".claude", "projects")) else None
    print("PROBE-RESULT:" + json.dumps(r), flush=True)


def _check(rc: int) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


if __name__ == "__main__":
    main()
