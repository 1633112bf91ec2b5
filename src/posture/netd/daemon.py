"""`posture netd`: the root network helper for L2, and its client.

The helper owns one long-lived cgroup (`<base>/net`) and, at its own start, loads an
nftables table in its network namespace that refuses every blocked destination to
sockets of that cgroup (so the rule always carries the cgroup's current id). On request
from a user, checked with SO_PEERCRED against the owner of the target sandbox process
and of its user namespace, it

  * moves the sandbox's first process into a per-session cgroup `<base>/box/<key>`
    (whose cgroup.freeze and cgroup.kill the user may write: freeze, thaw, stop),
  * starts slirp4netns for the sandbox's network namespace from `<base>/net/<key>`,
    in a private mount namespace, joined to the sandbox's user namespace (so it keeps
    no capability outside it), with per-session extra blocks in the `sessions` chain,
  * waits for slirp4netns to be ready, and answers.

Before each attach it verifies the rule against the cgroup's id now and refuses when
they differ: fail closed. When the sandbox's first process exits (or on `release`)
it stops slirp4netns, kills what is left in the session's cgroups and removes them.

Protocol: one JSON object per line each way over a unix socket (mode 0666).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BASE = "posture"
DEFAULT_TABLE = "posture"
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NS_GET_USERNS = 0xB701
NS_GET_OWNER_UID = 0xB704


from .client import DEFAULT_SOCKET, PROTOCOL, NetdError, request  # noqa: F401


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


@dataclass
class Attached:
    """One sandbox the helper gave a network to."""

    key: str
    uid: int
    pid: int
    pidfd: int
    box: str
    net: str
    slirp: subprocess.Popen | None = None
    exit_w: int = -1
    ruled: bool = False
    counted: tuple[str, ...] = ()  # the ranges whose drops are counted for it (nft.drop_counts)
    done: threading.Event = field(default_factory=threading.Event)


SPARES = 3  # slirp4netns launchers kept ready
REFILL_DELAY = 0.3  # seconds after an attach before the pool is topped up

# Runs as `python3 -I -S -c _LAUNCHER FD`: first enters a private mount namespace of its own (what
# `unshare -m --propagation private` did at attach time, done ahead of time here), then waits for
# argv (JSON, with {0} {1} {2} standing for the fds passed alongside) on the unix socket FD, then
# execs it with exactly those fds inherited.
_LAUNCHER = r"""
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
    sys.exit(f"launcher: unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
if libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
    sys.exit(f"launcher: mount --make-rprivate /: {os.strerror(ctypes.get_errno())}")
s = socket.socket(fileno=int(sys.argv[1]))
msg, fds, _flags, _addr = socket.recv_fds(s, 65536, 8)
if not msg:
    sys.exit(0)
for fd in fds:
    os.set_inheritable(fd, True)
argv = [a.format(*fds) for a in json.loads(msg)]
s.close()
os.execvp(argv[0], argv)
"""


@dataclass
class Spare:
    """A launcher waiting in its own cgroup below `net` for a sandbox to serve."""

    cgroup: str
    proc: subprocess.Popen
    sock: socket.socket


def _resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    out = []
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
                except ValueError:
                    continue
    except OSError:
        pass
    return out


def _status_uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise ProcessLookupError(pid)


def _private_cgroup_mount() -> None:
    """Under `ip netns exec` /sys is a fresh sysfs without cgroups: mount cgroup2 in a private mount ns."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    os.makedirs("/sys/fs/cgroup", exist_ok=True)
    if libc.mount(b"cgroup2", b"/sys/fs/cgroup", b"cgroup2", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount -t cgroup2 none /sys/fs/cgroup")


class Daemon:
    """The helper's state: its cgroups, its table and the attached sandboxes."""

    def __init__(self, sock_path: str, base: str | None, table: str, ipv6: bool) -> None:
        from .. import netpolicy
        from . import cgroups

        self.cg = cgroups
        self.sock_path = sock_path
        self.table = table
        self.ipv6 = ipv6
        mount = cgroups.v2_mount()
        if mount is None:
            _private_cgroup_mount()
            mount = cgroups.require_v2()
        self.mount = mount
        self.base = (base or self._default_base()).strip("/")
        self.net = f"{self.base}/net"
        self.boxes = f"{self.base}/box"
        self.blocked = netpolicy.NetworkPolicy().all_blocked()
        self.sessions: dict[str, Attached] = {}
        self.lock = threading.Lock()
        self.nft_lock = threading.Lock()
        self.verified: tuple[int, int] | None = None  # (ruleset generation, cgroup id) of the last passed check
        self.netns = os.stat("/proc/self/ns/net").st_ino
        self.stopping = False
        self.spares: list[Spare] = []
        self.spare_lock = threading.Lock()

    def _default_base(self) -> str:
        own = self.cg.own() or "/"
        if os.environ.get("INVOCATION_ID") and own.endswith(".service"):
            # Started by systemd with Delegate=yes: work inside our own delegated cgroup.
            base = own.strip("/")
            self.cg.create(f"{base}/daemon", self.mount)
            self.cg.move(os.getpid(), f"{base}/daemon", self.mount)
            return base
        return DEFAULT_BASE

    # -------------------------------------------------------------- rule
    def load_rule(self) -> None:
        from . import nft

        self.cg.create(self.net, self.mount)
        self.cg.create(self.boxes, self.mount)
        for parent in (self.net, self.boxes):  # empty leftovers of a helper that did not stop cleanly
            for child in self.cg.path_of(parent, self.mount).iterdir():
                if child.is_dir():
                    try:
                        child.rmdir()
                    except OSError:
                        pass
        text = nft.ruleset(self.table, self.cg.nft_path(self.net, self.mount), self.cg.level(self.net), self.blocked, _resolvers())
        with self.nft_lock:
            nft.load(text)
        _log(f"loaded table inet {self.table} for cgroup {self.net} (id {self.cg.cgroup_id(self.net, self.mount)}, level {self.cg.level(self.net)})")

    def verify(self) -> tuple[bool, str, int | None]:
        """The full check (nft.verify) of the rule against the cgroup's id now. Listing the table
        costs ~10 ms of CPU on every attach (nft walks /sys/fs/cgroup to print each rule's cgroup),
        so a passed check is remembered with the kernel's ruleset generation it saw: while neither
        that generation (bumped by every change to any rule, set or table) nor the cgroup's id has
        changed, the ruleset is the one verified; anything else runs the full check again."""
        from . import nft

        current = self.cg.cgroup_id(self.net, self.mount)
        with self.nft_lock:
            before = nft.generation()
            if before is not None and current is not None and self.verified == (before, current):
                return True, f"rule loaded for cgroup id {current}", current
            self.verified = None
            verdict = nft.verify(self.table, current, self.blocked)
            if verdict.ok and before is not None and current is not None and nft.generation() == before:
                self.verified = (before, current)
        return verdict.ok, verdict.detail, current

    def _own_change(self, change: Any) -> None:
        """Run one of the helper's own `sessions`-chain transactions (nft_lock held) so that it does not void
        a remembered check: when the generation moved by exactly this one commit, the verified base rules are unchanged."""
        from . import nft

        before = nft.generation()
        kept = self.verified is not None and before is not None and self.verified[0] == before
        change()
        after = nft.generation()
        if kept and after is not None and before is not None and after == before + 1 and self.verified is not None:
            self.verified = (after, self.verified[1])

    # -------------------------------------------------------------- requests
    def handle(self, conn: socket.socket) -> None:
        with conn:
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _peer_pid, uid, _gid = struct.unpack("3i", creds)
            conn.settimeout(30)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                if len(buf) > 1 << 16:
                    raise ValueError("request too large")
            req = json.loads(buf)
            op = req.get("op")
            if op == "status":
                answer = self.op_status()
            elif op == "attach":
                answer = self.op_attach(uid, req)
            elif op == "release":
                answer = self.op_release(uid, req)
            elif op == "drops":
                answer = self.op_drops(uid, req)
            else:
                answer = {"ok": False, "code": "failed", "error": f"unknown op {op!r}"}
        except NetdError as exc:
            answer = {"ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - every failure becomes an answer
            _log(f"request failed: {exc!r}")
            answer = {"ok": False, "code": "failed", "error": f"network helper: {exc}"}
        try:
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass

    def op_status(self) -> dict[str, Any]:
        ok, detail, current = self.verify()
        return {
            "ok": True,
            "protocol": PROTOCOL,
            "verified": ok,
            "detail": detail,
            "cgroup": self.net,
            "cgroup_dir": str(self.cg.path_of(self.net, self.mount)),
            "cgroup_id": current,
            "table": self.table,
            "netns": self.netns,
            "pid": os.getpid(),
            "sessions": len(self.sessions),
            "blocked": self.blocked,
        }

    def _check_target(self, uid: int, pid: int) -> int:
        """Open a pidfd for `pid` after checking that `uid` owns it and its namespaces."""
        pidfd = os.pidfd_open(pid)
        try:
            uids = _status_uids(pid)
            if uid != 0 and any(u != uid for u in uids):
                raise NetdError("denied", f"process {pid} does not belong to uid {uid}")
            netfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if os.fstat(netfd).st_ino == self.netns:
                    raise NetdError("denied", f"process {pid} shares the helper's network namespace")
                usernsfd = fcntl.ioctl(netfd, NS_GET_USERNS)
                try:
                    owner = struct.unpack("I", fcntl.ioctl(usernsfd, NS_GET_OWNER_UID, b"\0" * 4))[0]
                finally:
                    os.close(usernsfd)
            finally:
                os.close(netfd)
            if owner != uid:
                raise NetdError("denied", f"the network namespace of {pid} is not owned by uid {uid}")
            # The pid could have been reused between pidfd_open and the checks: make sure it still is ours.
            os.stat(f"/proc/{pid}")
            signal.pidfd_send_signal(pidfd, 0)
        except BaseException:
            os.close(pidfd)
            raise
        return pidfd

    def op_attach(self, uid: int, req: dict[str, Any]) -> dict[str, Any]:
        from . import nft

        started = time.monotonic()
        sid = str(req.get("session", ""))
        if not SESSION_ID.match(sid):
            raise NetdError("failed", f"invalid session id {sid!r}")
        pid = int(req["pid"])
        extra = [str(ipaddress.ip_network(c, strict=False)) for c in req.get("block", [])]
        ipv6 = bool(req.get("ipv6", self.ipv6))
        network = req.get("network", True) is not False  # False: loopback only (the session's way out is its gateway)
        key = f"u{uid}-{sid}"
        pidfd = self._check_target(uid, pid)
        # The sandbox waits on its block fd until the client hears back, so nothing in it runs
        # before this answer; the rule check runs alongside the set-up and gates the answer.
        verdict: list[tuple[bool, str, int | None]] = []
        checker = threading.Thread(target=lambda: verdict.append(self.verify()), daemon=True)
        checker.start()
        with self.lock:
            if key in self.sessions or self.stopping:
                os.close(pidfd)
                raise NetdError("busy", f"session {sid} already has a network")
            att = Attached(key=key, uid=uid, pid=pid, pidfd=pidfd, box=f"{self.boxes}/{key}", net="")
            self.sessions[key] = att
        moved: list[BaseException | None] = []

        def move_box() -> None:
            # A first cgroup migration waits for an RCU grace period: let it overlap the rest.
            try:
                box_dir = self.cg.create(att.box, self.mount)
                for name in ("cgroup.freeze", "cgroup.kill"):
                    try:
                        os.chown(box_dir / name, uid, -1)
                    except FileNotFoundError:
                        pass
                # pid 1 of the sandbox first: whatever it forks from now on is born inside;
                # then whatever it forked already (the agent, which forks only on request).
                self.cg.move(pid, att.box, self.mount)
                for p in _descendants(pid):
                    self.cg.move(p, att.box, self.mount)
                moved.append(None)
            except BaseException as exc:  # noqa: BLE001 - reported below
                moved.append(exc)

        mover = threading.Thread(target=move_box, daemon=True)
        mover.start()
        box_dir = self.cg.path_of(att.box, self.mount)
        try:
            t_cg = time.monotonic()
            if network:
                spare = self._take_spare()
                att.net = spare.cgroup
                ruled: list[BaseException | None] = []

                def add_rules() -> None:  # beside slirp's start: its extra blocks and drop counters hold before the answer
                    try:
                        with self.nft_lock:
                            self._own_change(lambda: nft.add_session_rules(
                                self.table, self.cg.nft_path(att.net, self.mount), self.cg.level(att.net), extra, att.key, count=att.counted))
                        ruled.append(None)
                    except BaseException as exc:  # noqa: BLE001 - raised below
                        ruled.append(exc)

                att.ruled, att.counted = True, tuple(dict.fromkeys([*self.blocked, *extra]))
                rules = threading.Thread(target=add_rules, daemon=True)
                rules.start()
                try:
                    self._start_slirp(att, spare, ipv6)
                finally:
                    rules.join()
                if not ruled or ruled[0] is not None:
                    raise NetdError("failed", f"could not add the session's rules: {ruled[0] if ruled else 'unknown'}")
            t_slirp = time.monotonic()
            mover.join()
            if not moved or moved[0] is not None:
                raise NetdError("failed", f"could not move the sandbox into its cgroup: {moved[0] if moved else 'unknown'}")
            checker.join()
            ok, detail, _ = verdict[0] if verdict else (False, "the rule check failed", None)
            if not ok:
                raise NetdError("unverified", f"network policy not in force: {detail}")
        except BaseException as exc:
            checker.join()
            mover.join()
            self.cleanup(att)
            if verdict and not verdict[0][0]:  # a missing rule explains the failure best (the counters need the table too)
                raise NetdError("unverified", f"network policy not in force: {verdict[0][1]}") from None
            if isinstance(exc, NetdError):
                raise
            raise NetdError("failed", f"could not attach the network: {exc}") from exc
        threading.Thread(target=self._watch, args=(att,), daemon=True).start()
        # Refill the launcher pool a little later, off the path of the session's first command.
        threading.Timer(REFILL_DELAY, self._fill_spares).start()
        _log(f"attached {key} pid {pid} slirp {att.slirp.pid if att.slirp else '-'} in {1000 * (time.monotonic() - started):.0f} ms"
             f" (slirp {1000 * (t_slirp - t_cg):.0f})")
        return {"ok": True, "box": att.box, "box_dir": str(box_dir), "net": att.net, "slirp_pid": att.slirp.pid if att.slirp else None}

    # -------------------------------------------------------------- slirp4netns launchers
    # Moving a process into a cgroup costs an RCU grace period (~10 ms) on many kernels, so
    # launchers are started ahead of time, each already in its own cgroup below `net`; at
    # attach time one receives the namespace and pipe fds and execs slirp4netns.

    def _new_spare(self) -> "Spare":
        import secrets

        rel = f"{self.net}/s{secrets.token_hex(6)}"
        self.cg.create(rel, self.mount)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(child.fileno())],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        child.close()
        try:
            self.cg.move(proc.pid, rel, self.mount)
        except OSError:
            proc.kill()
            proc.wait()
            parent.close()
            self.cg.remove(rel, self.mount)
            raise
        return Spare(rel, proc, parent)

    def _take_spare(self) -> "Spare":
        with self.lock:
            while self.spares:
                spare = self.spares.pop()
                if spare.proc.poll() is None:
                    return spare
                spare.sock.close()
        return self._new_spare()

    def _fill_spares(self) -> None:
        with self.spare_lock:
            while len(self.spares) < SPARES and not self.stopping:
                try:
                    spare = self._new_spare()
                except OSError as exc:
                    _log(f"could not prepare a slirp4netns launcher: {exc}")
                    return
                with self.lock:
                    self.spares.append(spare)

    def _start_slirp(self, att: Attached, spare: "Spare", ipv6: bool) -> None:
        netfd = os.open(f"/proc/{att.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            usernsfd = fcntl.ioctl(netfd, NS_GET_USERNS)
        finally:
            os.close(netfd)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
        argv = [  # the launcher is in a private mount namespace already (see _LAUNCHER)
            "slirp4netns", "--configure", "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
            *(["--enable-ipv6"] if ipv6 else []),
            "--userns-path=/proc/self/fd/{0}", "-r", "{1}", "-e", "{2}",
            str(att.pid), "tap0",
        ]
        att.slirp = spare.proc
        att.exit_w = exit_w
        try:
            socket.send_fds(spare.sock, [json.dumps(argv).encode()], [usernsfd, ready_w, exit_r])
        finally:
            spare.sock.close()
            for fd in (usernsfd, ready_w, exit_r):
                os.close(fd)
        try:
            readable, _, _ = select.select([ready_r], [], [], 10)
            got = os.read(ready_r, 1) if readable else b""
        finally:
            os.close(ready_r)
        if got != b"1":
            err: list[str] = []
            if att.slirp.poll() is not None and att.slirp.stderr is not None:
                err = att.slirp.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            raise NetdError("failed", f"slirp4netns did not become ready: {err or 'timeout'}")
        # Drain slirp's chatter so it never blocks on a full pipe.
        threading.Thread(target=_drain, args=(att.slirp.stderr,), daemon=True).start()
        if ipv6:
            # Configure the v6 address now rather than waiting for slirp's router advertisement.
            from . import netlink

            try:
                netlink.configure_ipv6(att.pid, "fd00::100", 64, "fd00::2")
            except OSError as exc:
                _log(f"IPv6 set-up of {att.key} failed: {exc}")

    def _watch(self, att: Attached) -> None:
        try:
            while not att.done.is_set():
                readable, _, _ = select.select([att.pidfd], [], [], 1.0)
                if readable:
                    break
                if att.slirp is not None and att.slirp.poll() is not None:
                    _log(f"slirp4netns of {att.key} exited ({att.slirp.returncode}); stopping its sandbox")
                    break
        except (OSError, ValueError):
            pass
        self.cleanup(att)

    def op_drops(self, uid: int, req: dict[str, Any]) -> dict[str, Any]:
        """Packets the kernel dropped so far for the caller's session, per blocked range."""
        from . import nft

        with self.lock:
            att = self.sessions.get(f"u{uid}-{req.get('session', '')}")
        if att is None or not att.ruled:
            return {"ok": True, "drops": {}}
        with self.nft_lock:
            return {"ok": True, "drops": nft.drop_counts(self.table, att.key, att.counted)}

    def op_release(self, uid: int, req: dict[str, Any]) -> dict[str, Any]:
        sid = str(req.get("session", ""))
        key = f"u{uid}-{sid}"
        with self.lock:
            att = self.sessions.get(key)
        if att is not None:
            self.cleanup(att)
        return {"ok": True, "released": att is not None}

    def cleanup(self, att: Attached) -> None:
        """Stop slirp4netns, kill what is left of the session, remove its cgroups and rules."""
        from . import nft

        with self.lock:
            if att.done.is_set():
                return
            att.done.set()
        if att.exit_w >= 0:
            os.close(att.exit_w)
            att.exit_w = -1
        if att.slirp is not None:
            try:
                att.slirp.wait(timeout=2)
            except subprocess.TimeoutExpired:
                att.slirp.kill()
                att.slirp.wait()
        for rel in filter(None, (att.box, att.net)):
            try:
                self.cg.remove(rel, self.mount)
            except OSError as exc:
                _log(f"could not remove cgroup {rel}: {exc}")
        if att.ruled:
            with self.nft_lock:
                self._own_change(lambda: nft.remove_session_rules(self.table, att.key))
        try:
            os.close(att.pidfd)
        except OSError:
            pass
        with self.lock:
            self.sessions.pop(att.key, None)
        _log(f"released {att.key}")

    # -------------------------------------------------------------- lifecycle
    def serve(self, pidfile: str | None = None) -> None:
        self.load_rule()
        self._fill_spares()
        path = Path(self.sock_path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(str(path))
        os.chmod(path, 0o666)
        listener.listen(64)
        if pidfile:
            Path(pidfile).write_text(f"{os.getpid()}\n")
        stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
        signal.signal(signal.SIGTERM, lambda *_: os.write(stop_w, b"x"))
        signal.signal(signal.SIGINT, lambda *_: os.write(stop_w, b"x"))
        _log(f"listening on {path} (netns {self.netns}, cgroup {self.cg.path_of(self.net, self.mount)})")
        try:
            while True:
                readable, _, _ = select.select([listener, stop_r], [], [])
                if stop_r in readable:
                    break
                conn, _ = listener.accept()
                threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
        finally:
            self.shutdown(listener, path, pidfile)

    def shutdown(self, listener: socket.socket, path: Path, pidfile: str | None) -> None:
        from . import nft

        self.stopping = True
        listener.close()
        try:
            if os.stat(path).st_ino:
                path.unlink()
        except OSError:
            pass
        for att in list(self.sessions.values()):
            self.cleanup(att)
        with self.lock:
            spares, self.spares = self.spares, []
        for spare in spares:
            spare.sock.close()  # the launcher reads EOF and exits
            try:
                spare.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                spare.proc.kill()
            self.cg.remove(spare.cgroup, self.mount)
        try:
            with self.nft_lock:
                nft.remove_table(self.table)
        except nft.NftError as exc:
            _log(str(exc))
        for rel in (self.boxes, self.net, self.base):
            try:
                os.rmdir(self.cg.path_of(rel, self.mount))
            except OSError:
                pass
        if pidfile:
            Path(pidfile).unlink(missing_ok=True)
        _log("stopped")


def _drain(stream: Any) -> None:
    try:
        while stream.read(4096):
            pass
    except (OSError, ValueError):
        pass


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = [int(x) for x in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
                out += kids
                todo += kids
        except OSError:
            continue
    return out


def serve(sock_path: str = DEFAULT_SOCKET, base: str | None = None, table: str = DEFAULT_TABLE, ipv6: bool = True, pidfile: str | None = None) -> None:
    """Run the helper in the foreground until SIGTERM (root)."""
    if os.geteuid() != 0:
        raise PermissionError("posture netd must run as root (it loads nftables rules and starts slirp4netns)")
    Daemon(sock_path, base, table, ipv6).serve(pidfile)
