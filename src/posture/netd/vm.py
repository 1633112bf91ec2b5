"""The network helper's `vm` request: put an L3 session's QEMU under the L2 network rule.

QEMU's user-mode network stack turns the guest's connections into sockets of the QEMU
process, so a QEMU in a cgroup below the helper's `net` cgroup is governed by the same
nftables rule as an L2 sandbox's slirp4netns. Moving a process between cgroups needs
root; this is the one place an L3 session asks root for anything.

Request: {"op": "vm", "action": "attach"|"release", "session": SID, "uuid": UUID,
"block"?: [CIDR, ...]}. For `attach` the helper itself finds the QEMU process of domain
`posture-SID` with that UUID in /proc (exactly one, never a pid taken from the caller),
pins it with a pidfd and checks, against that pidfd:

  * the caller owns it: every uid of the process (real, effective, saved, fs) is the
    caller's (SO_PEERCRED); an ordinary user's domain runs QEMU as the user (a static
    DAC label, l3/domain.py); root may attach any;
  * it runs in the helper's network namespace (else the rule would not see its sockets).

Then it moves QEMU into `<net>/vm-u<uid>-<sid>`, adds the session's extra blocks and a drop
counter per blocked range (read back by the `drops` request, like an L2 session's), checks
the rule against the cgroup ids now (fail closed), and answers. When QEMU exits (or on
`release` by the same uid) the extra rules and the cgroup go.
"""

from __future__ import annotations

import ipaddress
import os
import re
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import NetdError

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class _Vm:
    key: str
    pid: int
    pidfd: int
    cgroup: str
    ruled: bool = False
    counted: tuple[str, ...] = ()  # the ranges whose drops are counted for it (nft.drop_counts)
    done: threading.Event = field(default_factory=threading.Event)


_VMS: dict[str, _Vm] = {}
_LOCK = threading.Lock()


def handle(daemon: Any, uid: int, req: dict[str, Any]) -> dict[str, Any]:
    """Answer one `vm` request from `uid` (SO_PEERCRED) for the helper `daemon`."""
    sid = str(req.get("session", ""))
    if not SESSION_ID.match(sid):
        raise NetdError("failed", f"invalid session id {sid!r}")
    key = f"u{uid}-{sid}"
    action = req.get("action")
    if action == "attach":
        return _attach(daemon, uid, sid, key, req)
    if action == "release":
        with _LOCK:
            vm = _VMS.get(key)
        if vm is not None:
            _cleanup(daemon, vm)
        return {"ok": True, "released": vm is not None}
    raise NetdError("failed", f"unknown vm action {action!r}")


def drops(daemon: Any, key: str) -> dict[str, int] | None:
    """The kernel's drops so far for the VM of session `key` ("u<uid>-<sid>"), per blocked range; None: no such VM."""
    from . import nft

    with _LOCK:
        vm = _VMS.get(key)
    if vm is None or not vm.ruled:
        return None
    with daemon.nft_lock:
        return nft.drop_counts(daemon.table, f"vm-{key}", vm.counted)


def _argv(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def _is_domain(argv: list[str], name: str, uuid: str) -> bool:
    """True when `argv` is QEMU's command line for domain `name` with `uuid` (as libvirt writes it)."""
    if not argv or not os.path.basename(argv[0]).startswith("qemu-system"):
        return False
    names = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-name"]
    uuids = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-uuid"]
    return any(n == f"guest={name}" or n.startswith(f"guest={name},") for n in names) and uuids == [uuid]


def find_qemu(name: str, uuid: str) -> int:
    """The pid of the one QEMU process running domain `name` with `uuid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _is_domain(_argv(entry), name, uuid):
                    found.append(int(entry))
            except OSError:
                continue
    if len(found) != 1:
        raise NetdError("denied", f"{'no' if not found else 'more than one'} QEMU process runs domain {name} ({uuid})")
    return found[0]


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise ProcessLookupError(pid)


def _check(daemon: Any, uid: int, name: str, uuid: str) -> tuple[int, int]:
    """(pid, pidfd) of the domain's QEMU after the ownership and namespace checks."""
    pid = find_qemu(name, uuid)
    pidfd = os.pidfd_open(pid)
    try:
        # against the pinned process: the pid cannot have been reused once the pidfd is open and it still answers
        if not _is_domain(_argv(pid), name, uuid):
            raise NetdError("denied", f"process {pid} is no longer the QEMU of {name}")
        if uid != 0 and any(u != uid for u in _uids(pid)):
            raise NetdError("denied", f"the QEMU of {name} (pid {pid}) does not run as uid {uid}")
        if os.stat(f"/proc/{pid}/ns/net").st_ino != daemon.netns:
            raise NetdError("denied", f"the QEMU of {name} runs in another network namespace than the helper's (start libvirtd and `posture netd` in the same one)")
        signal.pidfd_send_signal(pidfd, 0)
    except BaseException:
        os.close(pidfd)
        raise
    return pid, pidfd


def _attach(daemon: Any, uid: int, sid: str, key: str, req: dict[str, Any]) -> dict[str, Any]:
    from . import nft

    started = time.monotonic()
    uuid = str(req.get("uuid", "")).lower()
    if not UUID.match(uuid):
        raise NetdError("failed", f"invalid domain uuid {uuid!r}")
    extra = [str(ipaddress.ip_network(c, strict=False)) for c in req.get("block", [])]
    pid, pidfd = _check(daemon, uid, f"posture-{sid}", uuid)
    vm = _Vm(key=key, pid=pid, pidfd=pidfd, cgroup=f"{daemon.net}/vm-{key}")
    with _LOCK:
        if key in _VMS:
            os.close(pidfd)
            raise NetdError("busy", f"session {sid} already has a network")
        _VMS[key] = vm
    try:
        daemon.cg.create(vm.cgroup, daemon.mount)
        daemon.cg.move(pid, vm.cgroup, daemon.mount)
        if daemon.cg.own(pid) != "/" + vm.cgroup:
            raise NetdError("failed", f"QEMU did not land in cgroup {vm.cgroup} (it is in {daemon.cg.own(pid)})")
        vm.counted = tuple(dict.fromkeys([*daemon.blocked, *extra]))  # every drop counted, for the egress log
        with daemon.nft_lock:
            nft.add_session_rules(daemon.table, daemon.cg.nft_path(vm.cgroup, daemon.mount), daemon.cg.level(vm.cgroup), extra,
                                  f"vm-{key}", count=vm.counted)
        vm.ruled = True
        ok, detail, _ = daemon.verify()
        if not ok:
            raise NetdError("unverified", f"network policy not in force: {detail}")
    except BaseException as exc:
        _cleanup(daemon, vm)  # fail closed: the paused VM dies with its cgroup
        if isinstance(exc, NetdError):
            raise
        raise NetdError("failed", f"could not attach the VM's network: {exc}") from exc
    threading.Thread(target=_watch, args=(daemon, vm), daemon=True).start()
    _log(f"vm {key} qemu {pid} in {vm.cgroup} ({1000 * (time.monotonic() - started):.0f} ms)")
    return {"ok": True, "cgroup": vm.cgroup, "qemu_pid": pid}


def _watch(daemon: Any, vm: _Vm) -> None:
    try:
        while not vm.done.is_set():
            if select.select([vm.pidfd], [], [], 1.0)[0]:
                break
    except (OSError, ValueError):
        pass
    _cleanup(daemon, vm)


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


def _cleanup(daemon: Any, vm: _Vm) -> None:
    """Remove the VM's extra rules and its cgroup (killing what is left in it)."""
    from . import nft

    with _LOCK:
        if vm.done.is_set():
            return
        vm.done.set()
        _VMS.pop(vm.key, None)
    if vm.ruled:
        try:
            with daemon.nft_lock:
                nft.remove_session_rules(daemon.table, f"vm-{vm.key}")
        except Exception:  # noqa: BLE001 - best effort, logged
            _log(f"vm {vm.key}: could not remove its rules")
    try:
        daemon.cg.remove(vm.cgroup, daemon.mount)
    except OSError as exc:
        _log(f"vm {vm.key}: could not remove cgroup {vm.cgroup}: {exc}")
    try:
        os.close(vm.pidfd)
    except OSError:
        pass


def shutdown(daemon: Any) -> None:
    """Stop every VM this helper governs (fail closed: its rule goes with the helper). For the daemon's shutdown."""
    with _LOCK:
        vms = list(_VMS.values())
    for vm in vms:
        _cleanup(daemon, vm)
