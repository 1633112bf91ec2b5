"""`posture netd`: the root network helper for L2, and its client.

The helper owns one long-lived cgroup (`<base>/net`) and, at its own start, loads an
nftables table in its network namespace that refuses every blocked destination to
sockets of that cgroup (so the rule always carries the cgroup's current id). On request
from a user, checked with SO_PEERCRED against the owner of the target sandbox process
and of its user namespace (target.py), it

  * moves the sandbox's first process into a per-session cgroup `<base>/box/<key>`
    (whose cgroup.freeze and cgroup.kill the user may write: freeze, thaw, stop),
  * starts slirp4netns for the sandbox's network namespace from `<base>/net/<key>`
    (slirp.py), in a private mount namespace, joined to the sandbox's user namespace (so
    it keeps no capability outside it), with per-session extra blocks in the `sessions` chain,
  * waits for slirp4netns to be ready, and answers.

Before each attach it verifies the rule against the cgroup's id now and refuses when
they differ: fail closed. When the sandbox's first process exits (or on `release`)
it stops slirp4netns, kills what is left in the session's cgroups and removes them.

Every local user may connect, so the helper is bounded per uid (limits.py): the event
loop (loop.py) never waits on a client, requests are checked field by field before use
(requests.py), and the slow work runs on a small pool of threads fair between uids
(workers.py).

Protocol: one JSON object per line each way over a unix socket (mode 0666).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import requests, rulecheck, sessionrules, slirp, target
from .nft import generation as nft_generation
from .nft import remove_session_rules as nft_remove
from .client import DEFAULT_SOCKET, PROTOCOL, NetdError, request  # noqa: F401
from .limits import WORKERS, Limits, message
from .loop import Answer, Server
from .workers import FairPool

DEFAULT_BASE = "posture"
DEFAULT_TABLE = "posture"
SESSION_ID = requests.SESSION_ID
Handler = Callable[[int, dict[str, Any]], Answer]


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
    netns: int = 0
    slirp: subprocess.Popen | None = None
    exit_w: int = -1
    ruled: bool = False
    counted: tuple[str, ...] = ()  # the ranges whose drops are counted for it (nft.drop_counts)
    watches: list[int] = field(default_factory=list)  # the loop's copies of pidfd and slirp's stderr
    done: threading.Event = field(default_factory=threading.Event)


class Daemon:
    """The helper's state: its cgroups, its table and the attached sandboxes."""

    def __init__(self, sock_path: str, base: str | None, table: str, ipv6: bool, limits: Limits | None = None) -> None:
        from .. import netpolicy
        from . import cgroups

        self.cg = cgroups
        self.sock_path = sock_path
        self.table = table
        self.ipv6 = ipv6
        limits = limits or Limits()
        mount = cgroups.v2_mount()
        if mount is None:
            cgroups.private_mount()
            mount = cgroups.require_v2()
        self.mount = mount
        self.base = (base or self._default_base()).strip("/")
        self.net = f"{self.base}/net"
        self.boxes = f"{self.base}/box"
        self.blocked = netpolicy.NetworkPolicy().all_blocked()
        self.sessions: dict[str, Attached] = {}
        self.lock = threading.Lock()
        self.nft_lock = threading.Lock()
        self.check = rulecheck.RememberedCheck(nft_generation)  # the last passed rule check, while it stands
        self.unruler = sessionrules.Unruler(lambda keys: self.check.own_change(lambda: nft_remove(self.table, keys)), self.nft_lock, _log)
        self.netns = os.stat("/proc/self/ns/net").st_ino
        self.stopping = False
        self.limits = limits
        self.spares = slirp.SparePool(cgroups, mount, self.net, _log)
        self.pool = FairPool(WORKERS)
        self.server: Server | None = None
        self.ops: dict[str, tuple[requests.Schema, Handler]] = {  # op -> (its fields, its handler)
            "status": (requests.STATUS, self.op_status),
            "attach": (requests.ATTACH, self.op_attach),
            "release": (requests.RELEASE, self.op_release),
            "vm": (requests.VM, self.op_vm),  # an L3 session's QEMU under the rule: netd/vm.py
            "drops": (requests.DROPS, self.op_drops),
        }

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
        text = nft.ruleset(self.table, self.cg.nft_path(self.net, self.mount), self.cg.level(self.net), self.blocked, nft.resolvers())
        with self.nft_lock:
            nft.load(text)
        _log(f"loaded table inet {self.table} for cgroup {self.net} (id {self.cg.cgroup_id(self.net, self.mount)}, level {self.cg.level(self.net)})")

    def verify(self) -> tuple[bool, str, int | None]:
        """The full check (nft.verify) of the rule against the cgroup's id now, unless a passed one
        still stands (rulecheck.RememberedCheck: neither the ruleset generation nor the cgroup's id moved)."""
        from . import nft

        current = self.cg.cgroup_id(self.net, self.mount)
        with self.nft_lock:
            holds, before = self.check.holds(current)
            if holds:
                return True, f"rule loaded for cgroup id {current}", current
            verdict = nft.verify(self.table, current, self.blocked)
            if verdict.ok:
                self.check.remember(before, current)
        return verdict.ok, verdict.detail, current

    def _unrule_later(self, key: str) -> None:
        """Queue a session's rules for removal (sessionrules.Unruler: one listing for every ended session)."""
        self.unruler.add(key)

    # -------------------------------------------------------------- requests
    def dispatch(self, uid: int, line: bytes) -> Answer | Callable[[], Answer]:
        """In the loop: check the request `line` of `uid`; a refusal now, or the job that answers it."""
        try:
            op, args = requests.check(requests.parse(line), {name: schema for name, (schema, _) in self.ops.items()})
        except NetdError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}
        handler = self.ops[op][1]
        return lambda: self._run(handler, uid, args)

    def _run(self, handler: Handler, uid: int, args: dict[str, Any]) -> Answer:
        """In a worker: run one op; every failure becomes an answer."""
        try:
            return handler(uid, args)
        except NetdError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - every failure becomes an answer
            _log(f"request of uid {uid} failed: {exc!r}")
            return {"ok": False, "code": "failed", "error": f"network helper: {exc}"}

    def op_vm(self, uid: int, args: dict[str, Any]) -> Answer:
        """Put an L3 session's QEMU (found by the helper, owned by the caller) under the rule, or release it."""
        from . import vm

        return vm.handle(self, uid, args)

    def op_status(self, uid: int, args: dict[str, Any]) -> Answer:
        """The helper's state and whether its rule is in force."""
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
            "limits": vars(self.limits),
            "blocked": self.blocked,
        }

    def _admit(self, uid: int, sid: str, pid: int, pidfd: int, netns: int) -> Attached:
        """Register a new session of `uid` unless that would pass a bound or repeat one."""
        key = f"u{uid}-{sid}"
        with self.lock:
            mine = sum(1 for a in self.sessions.values() if a.uid == uid)
            # a namespace's inode number is reused once it is freed: a session whose sandbox has exited (its
            # cleanup still pending) does not hold it (without slirp4netns a namespace is freed at once)
            if self.stopping or key in self.sessions or any(a.netns == netns and not sessionrules.exited(a.pidfd) for a in self.sessions.values()):
                os.close(pidfd)
                raise NetdError("busy", f"session {sid} (or the network namespace of {pid}) already has a network")
            if mine >= self.limits.max_sessions_per_uid:
                os.close(pidfd)
                raise NetdError("limit", message("max_sessions_per_uid", f"uid {uid} has {mine} sandboxes attached",
                                                 self.limits.max_sessions_per_uid))
            att = Attached(key=key, uid=uid, pid=pid, pidfd=pidfd, box=f"{self.boxes}/{key}", net="", netns=netns)
            self.sessions[key] = att
        return att

    def op_attach(self, uid: int, args: dict[str, Any]) -> Answer:
        """Give the sandbox whose first process is `pid` its network (see the module's docstring)."""
        from . import nft

        started = time.monotonic()
        sid, pid, extra = args["session"], args["pid"], args["block"]
        ipv6 = self.ipv6 if args["ipv6"] is None else args["ipv6"]
        pidfd, netns = target.check(uid, pid, self.netns)
        att = self._admit(uid, sid, pid, pidfd, netns)
        network = args["network"] is not False  # False: loopback only (the session's way out is its gateway)
        # The sandbox waits on its block fd until the client hears back, so nothing in it runs
        # before this answer; the rule check runs alongside the set-up and gates the answer.
        verdict: list[tuple[bool, str, int | None]] = []
        checker = threading.Thread(target=lambda: verdict.append(self.verify()), daemon=True)
        checker.start()
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
                for p in target.descendants(pid):
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
                spare = self.spares.take()
                att.net = spare.cgroup
                att.slirp = spare.proc
                att.ruled, att.counted = True, tuple(dict.fromkeys([*self.blocked, *extra]))
                ruled: list[BaseException | None] = []

                def add_rules() -> None:  # beside slirp's start: its extra blocks and drop counters hold before the answer
                    try:
                        with self.nft_lock:
                            self.check.own_change(lambda: nft.add_session_rules(
                                self.table, self.cg.nft_path(att.net, self.mount), self.cg.level(att.net), extra, att.key, count=att.counted))
                        ruled.append(None)
                    except BaseException as exc:  # noqa: BLE001 - raised below
                        ruled.append(exc)

                rules = threading.Thread(target=add_rules, daemon=True)
                rules.start()
                try:
                    att.exit_w = slirp.start(spare, pid, ipv6)
                finally:
                    rules.join()
                if not ruled or ruled[0] is not None:
                    raise NetdError("failed", f"could not add the session's rules: {ruled[0] if ruled else 'unknown'}")
            t_slirp = time.monotonic()
            if ipv6 and network:
                self._configure_ipv6(att)
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
        if self.server is not None:
            server = self.server
            server.call_soon(lambda: self._watch(server, att))
        slirp_pid = att.slirp.pid if att.slirp is not None else None
        _log(f"attached {att.key} pid {pid} slirp {slirp_pid or '-'} in {1000 * (time.monotonic() - started):.0f} ms"
             f" (slirp {1000 * (t_slirp - t_cg):.0f})")
        return {"ok": True, "box": att.box, "box_dir": str(box_dir), "net": att.net, "slirp_pid": slirp_pid}

    def _configure_ipv6(self, att: Attached) -> None:
        """Configure the v6 address now rather than waiting for slirp's router advertisement."""
        from . import netlink

        try:
            netlink.configure_ipv6(att.pid, "fd00::100", 64, "fd00::2")
        except OSError as exc:
            _log(f"IPv6 set-up of {att.key} failed: {exc}")

    # -------------------------------------------------------------- the end of a session
    def _watch(self, server: Server, att: Attached) -> None:
        """In the loop: end the session when its first process exits or slirp4netns does (its stderr closes)."""
        with self.lock:
            if att.done.is_set():
                return
            att.watches.append(server.watch(att.pidfd, lambda _tok: self._ended(server, att, "its sandbox exited")))
            if att.slirp is not None and att.slirp.stderr is not None:
                fd = att.slirp.stderr.fileno()
                os.set_blocking(fd, False)
                att.watches.append(server.watch(fd, lambda tok: self._slirp_output(server, att, tok)))

    def _slirp_output(self, server: Server, att: Attached, token: int) -> None:
        try:
            if os.read(token, 4096):
                return  # slirp's chatter, drained so it never blocks on a full pipe
        except BlockingIOError:
            return
        except OSError:
            pass
        self._ended(server, att, "slirp4netns exited")

    def _ended(self, server: Server, att: Attached, why: str) -> None:
        for token in att.watches:
            server.unwatch(token)
        att.watches.clear()
        if not att.done.is_set():
            _log(f"{att.key}: {why}")
            self.pool.submit(att.uid, lambda: self.cleanup(att))

    def op_drops(self, uid: int, args: dict[str, Any]) -> Answer:
        """Packets the kernel dropped so far for the caller's session, per blocked range."""
        from . import nft

        with self.lock:
            att = self.sessions.get(f"u{uid}-{args['session']}")
        if att is None or not att.ruled:
            from . import vm

            return {"ok": True, "drops": vm.drops(self, f"u{uid}-{args['session']}") or {}}  # an L3 session's QEMU, or nothing
        with self.nft_lock:
            return {"ok": True, "drops": nft.drop_counts(self.table, att.key, att.counted)}

    def op_release(self, uid: int, args: dict[str, Any]) -> Answer:
        """End the session `args["session"]` of `uid` (if it has one)."""
        with self.lock:
            att = self.sessions.get(f"u{uid}-{args['session']}")
        if att is not None:
            self.cleanup(att)
        return {"ok": True, "released": att is not None}

    def cleanup(self, att: Attached) -> None:
        """Stop slirp4netns, kill what is left of the session, remove its cgroups and rules."""

        with self.lock:
            if att.done.is_set():
                return
            att.done.set()
        server = self.server
        if server is not None and att.watches:
            server.call_soon(lambda: self._ended(server, att, "released"))
        if att.exit_w >= 0:
            os.close(att.exit_w)
            att.exit_w = -1
        if att.slirp is not None:
            try:
                att.slirp.wait(timeout=2)
            except subprocess.TimeoutExpired:
                att.slirp.kill()
                att.slirp.wait()
            if att.slirp.stderr is not None:
                att.slirp.stderr.close()
        for rel in filter(None, (att.box, att.net)):
            try:
                self.cg.remove(rel, self.mount)
            except OSError as exc:
                _log(f"could not remove cgroup {rel}: {exc}")
        if att.ruled:
            self._unrule_later(att.key)
        try:
            os.close(att.pidfd)
        except OSError:
            pass
        with self.lock:
            self.sessions.pop(att.key, None)
        _log(f"released {att.key}")

    # -------------------------------------------------------------- lifecycle
    def serve(self, pidfile: str | None = None) -> None:
        """Load the rule, listen, and run the event loop until SIGTERM or SIGINT."""
        self.load_rule()
        self.spares.start()
        _raise_nofile(self.limits)
        path = Path(self.sock_path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(str(path))
        os.chmod(path, 0o666)
        listener.listen(4096)  # the kernel caps it at net.core.somaxconn
        if pidfile:
            Path(pidfile).write_text(f"{os.getpid()}\n")
        stop_r, stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.signal(signal.SIGTERM, lambda *_: os.write(stop_w, b"x"))
        signal.signal(signal.SIGINT, lambda *_: os.write(stop_w, b"x"))
        self.server = Server(listener, self.limits, self.dispatch, self.pool, _log)
        lim = self.limits
        _log(f"listening on {path} (netns {self.netns}, cgroup {self.cg.path_of(self.net, self.mount)}; limits: "
             f"{lim.max_connections} connections, {lim.max_per_uid} per uid, {lim.max_sessions_per_uid} sessions per uid, "
             f"{lim.request_timeout:g} s to send a request)")
        try:
            self.server.run(stop_r)
        finally:
            self.shutdown(listener, path, pidfile)

    def shutdown(self, listener: socket.socket, path: Path, pidfile: str | None) -> None:
        """End every session, the launchers, the table and the cgroups."""
        from . import nft

        self.stopping = True
        listener.close()
        try:
            if os.stat(path).st_ino:
                path.unlink()
        except OSError:
            pass
        self.pool.stop()
        for att in list(self.sessions.values()):
            self.cleanup(att)
        self.spares.stop()
        if self.server is not None:
            self.server.close()
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


def _raise_nofile(limits: Limits) -> None:
    """Lift the soft descriptor limit to the hard one: each connection and each session holds a few."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft < limits.max_connections + 64:
        _log(f"warning: {soft} file descriptors allow fewer than --max-connections {limits.max_connections}")


def serve(sock_path: str = DEFAULT_SOCKET, base: str | None = None, table: str = DEFAULT_TABLE, ipv6: bool = True,
          pidfile: str | None = None, limits: Limits | None = None) -> None:
    """Run the helper in the foreground until SIGTERM (root)."""
    if os.geteuid() != 0:
        raise PermissionError("posture netd must run as root (it loads nftables rules and starts slirp4netns)")
    Daemon(sock_path, base, table, ipv6, limits).serve(pidfile)
