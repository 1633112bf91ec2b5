"""L3 network: QEMU's user-mode stack, governed by the same nftables rule as L2.

The guest's packets never reach a host interface: QEMU's built-in slirp turns each guest
connection into an ordinary socket of the QEMU process. The network helper (`posture
netd`, root) places that process in a cgroup below its own, whose `socket cgroupv2` rule
refuses every blocked destination (internal ranges, metadata, the host's loopback, which
slirp's 10.0.2.2 maps to) for every socket of that subtree, so root in the guest cannot
lift the policy. The domain starts paused; posture asks the helper (its `vm` request,
netd/vm.py) to move QEMU, which finds the process itself, checks that the caller owns it
and that it shares the helper's network namespace, and re-verifies the rule; only then
does the guest run (fail closed). The same request serves root and ordinary users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import Unavailable
from ..netd import client as netd
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
    """QEMU's place under the helper's cgroup (the helper holds the cgroup and the extra rules)."""

    sid: str
    socket: str
    cgroup: str
    qemu_pid: int

    def describe(self) -> dict[str, Any]:
        """What a later process needs to release it."""
        return {"sid": self.sid, "socket": self.socket, "cgroup": self.cgroup, "qemu_pid": self.qemu_pid}

    def release(self) -> None:
        """Remove the session's extra rules and its (by now empty) cgroup."""
        release_described(self.describe())


def wanted(view: Any) -> bool:
    """Network mode public: the guest gets the policy's network (public open, internal blocked). Modes
    allowlist and none: no network interface at all; the gateway's door (l3/door.py) is the one way out."""
    return not view.network.through_gateway


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


def attach(plan: Plan, dom: Any, name: str) -> Attachment:
    """Ask the helper to put the paused domain's QEMU under the rule (with this view's extra blocks); fail closed."""
    sid = name[len("posture-"):]
    path = netd.socket_path(plan.settings)
    req = {"op": "vm", "action": "attach", "session": sid, "uuid": dom.UUIDString(), "block": plan.extra}
    try:
        answer = netd.request(path, req, timeout=30)
    except netd.NetdError as exc:
        raise Unavailable(f"the network helper would not govern the VM of {name}: {exc}", fix=NETD_FIX) from None
    except (OSError, ValueError) as exc:
        raise Unavailable(f"the network helper at {path} does not answer ({exc})", fix=NETD_FIX) from None
    return Attachment(sid=sid, socket=path, cgroup=str(answer.get("cgroup")), qemu_pid=int(answer.get("qemu_pid") or 0))


def release_described(data: dict[str, Any]) -> None:
    """Undo `attach` from its description (any process of the same user); the helper also does it when QEMU exits."""
    if not data or not data.get("sid") or not data.get("socket"):
        return
    try:
        netd.request(data["socket"], {"op": "vm", "action": "release", "session": data["sid"]}, timeout=10)
    except (OSError, ValueError, netd.NetdError):
        pass


def doctor(settings: Any) -> list[Check]:
    """The L3 network line of `posture doctor`."""
    try:
        status = _status(settings)
    except Unavailable as exc:
        return [Check("l3 network", False, exc.message, exc.fix or "")]
    return [Check("l3 network", True, f"network helper rule verified for cgroup {status.get('cgroup')} (netns {status.get('netns')})")]
