"""L3 network: QEMU's user-mode stack, governed by the same nftables rule as L2.

The guest's packets never reach a host interface: QEMU's built-in slirp turns each guest
connection into an ordinary socket of the QEMU process. posture places that process in a
cgroup below the network helper's (`posture netd`) cgroup, whose `socket cgroupv2` rule
refuses every blocked destination (internal ranges, metadata, the host's loopback, which
slirp's 10.0.2.2 maps to) for every socket of that subtree, so root in the guest cannot
lift the policy. libvirt puts QEMU in cgroups of its own, so posture moves it explicitly:
the domain starts paused, QEMU is moved and checked, then the guest runs (fail closed).
The rule only sees sockets in the helper's network namespace: QEMU (libvirtd's netns)
must share it, else posture refuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..netd import client as netd
from ..netd import cgroups
from ..errors import Unavailable
from ..session import Check

NETD_FIX = "start the network helper: `posture setup` (as root; it runs `posture netd`), in the network namespace libvirtd runs in"


@dataclass
class Plan:
    """What attaching needs: the helper's answer and the extra blocks of this view."""

    status: dict[str, Any]
    extra: list[str]
    settings: Any = None


@dataclass
class Attachment:
    """QEMU's place under the helper's cgroup, and this session's extra rules."""

    cgroup: str
    table: str
    comment: str
    qemu_pid: int
    netd_pid: int | None = None
    extra: bool = False

    def describe(self) -> dict[str, Any]:
        """What a later process needs to release it."""
        return {"cgroup": self.cgroup, "table": self.table, "comment": self.comment, "qemu_pid": self.qemu_pid,
                "netd_pid": self.netd_pid, "extra": self.extra}

    def release(self) -> None:
        """Remove the session's extra rules and its (by now empty) cgroup."""
        release_described(self.describe())


def wanted(view: Any) -> bool:
    """Every L3 session gets the policy's network (public open, internal blocked)."""
    return True


def _status(settings: Any) -> dict[str, Any]:
    path = netd.socket_path(settings)
    try:
        status = netd.request(path, {"op": "status"}, timeout=5)
    except (OSError, ValueError, netd.NetdError) as exc:
        raise Unavailable(f"the network helper at {path} does not answer ({exc})", fix=NETD_FIX) from None
    if not status.get("ok") or not status.get("verified"):
        raise Unavailable(f"network policy not in force: {status.get('detail') or status.get('error') or 'unverified'}", fix=NETD_FIX)
    return status


def prepare(settings: Any, view: Any) -> Plan:
    """Check the helper's rule holds now; Unavailable (fail closed) when it does not."""
    status = _status(settings)
    extra = list(view.network.extra)
    return Plan(status, [str(e) for e in extra], settings)


def qemu_pid(name: str) -> int:
    """The pid of the QEMU process running domain `name` (from its command line)."""
    needle = f"guest={name},".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd.split(b"\0", 1)[0] and needle in cmd:
            return int(entry)
    raise Unavailable(f"cannot find the QEMU process of {name}", fix="check that libvirtd runs on this host (a remote URI cannot be governed)")


def attach(plan: Plan, dom: Any, name: str) -> Attachment:
    """Move the paused domain's QEMU into a cgroup under the helper's; verify; return the attachment."""
    status = plan.status
    pid = qemu_pid(name)
    netns = os.stat(f"/proc/{pid}/ns/net").st_ino
    if netns != status.get("netns"):
        raise Unavailable(
            f"QEMU of {name} runs in network namespace {netns}, the network helper's rule governs {status.get('netns')}",
            fix="run `posture netd` in the same network namespace as libvirtd",
        )
    mount = cgroups.require_v2()
    rel = f"{status['cgroup'].strip('/')}/l3-{name}"
    cgroups.create(rel, mount)
    att = Attachment(rel, status.get("table") or "posture", f"l3-{name}", pid, status.get("pid"), bool(plan.extra))
    try:
        cgroups.move(pid, rel, mount)
        if cgroups.own(pid) != "/" + rel:
            raise Unavailable(f"QEMU of {name} did not land in cgroup {rel} (it is in {cgroups.own(pid)})", fix=NETD_FIX)
        if plan.extra:
            _nft_call(status, "add_session_rules", att.table, cgroups.nft_path(rel, mount), cgroups.level(rel), plan.extra, att.comment)
        again = _status(plan.settings)  # the helper re-verifies its rule against its cgroup's id now
        if again.get("netns") != status.get("netns") or again.get("cgroup") != status.get("cgroup"):
            raise Unavailable("the network helper changed while the VM started", fix=NETD_FIX)
    except BaseException:
        release_described(att.describe())
        raise
    return att


def _nft_call(status: dict[str, Any], func: str, *args: Any) -> None:
    """Call posture.nft.`func`(*args) inside the helper's network namespace (its table lives there)."""
    code = f"import json,sys; from posture.netd import nft; nft.{func}(*json.loads(sys.argv[1]))"
    argv = [sys.executable, "-c", code, json.dumps(list(args))]
    if status.get("pid") and os.stat(f"/proc/{status['pid']}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino:
        argv = ["nsenter", f"--net=/proc/{status['pid']}/ns/net", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"could not apply this session's extra network blocks: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}", fix=NETD_FIX)


def release_described(data: dict[str, Any]) -> None:
    """Undo `attach` from its description (any process)."""
    if not data:
        return
    if data.get("comment") and data.get("extra"):
        try:
            _nft_call({"pid": data.get("netd_pid")}, "remove_session_rules", data.get("table") or "posture", data["comment"])
        except (Unavailable, OSError):
            pass
    if data.get("cgroup"):
        try:
            cgroups.remove(data["cgroup"])
        except (OSError, RuntimeError):
            pass


def doctor(settings: Any) -> list[Check]:
    """The L3 network line of `posture doctor`."""
    try:
        status = _status(settings)
    except Unavailable as exc:
        return [Check("l3 network", False, exc.message, exc.fix or "")]
    return [Check("l3 network", True, f"network helper rule verified for cgroup {status.get('cgroup')} (netns {status.get('netns')})")]
