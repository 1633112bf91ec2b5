"""A session's one gateway process, whatever the level: started with the session, stopped with it.

The process is the credential broker (launch.py) when the profile has credentials on this host,
and also, or only, the egress proxy (egressdoor.py) when the session's one way out is the gateway
(network modes allowlist and none). Either way it listens on `gateway.sock` in the session's
private runtime dir; each level gives its sandbox its own way to that socket (L2 binds it in, L3
carries it over a virtio-serial port, L4 forwards it over posture's SSH connection).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on use: a session with no gateway (the hot path) never loads them
    from .egressdoor import Waiter
    from .launch import Running


@dataclass
class Door:
    """The started process and its socket on the host."""

    socket: str
    gateway: Running | None = None
    egress: Waiter | None = None


def open_door(view: Any, runtime: Path, session: str, data: dict[str, Any]) -> Door | None:
    """Start the session's gateway when it has something to do (credentials or egress); record its facts in
    `data` (the session record's data, for a `down` from another process); None when there is nothing."""
    from ..session import sessions_dir
    from . import egressdoor, launch

    log = sessions_dir() / f"{session}.egress.jsonl"
    data.update(network_mode=view.network.mode, egress_log=str(log))
    egress = egressdoor.plan(view.network, session, view.level, log) if view.network.through_gateway else None
    brokered = view.gateway
    if brokered is not None and brokered.active:
        running = launch.start(brokered, runtime, session, egress=egress)
        data.update(running.facts())
        return Door(running.socket, gateway=running)
    if egress is not None:  # no credential to broker: the egress proxy alone, started on its first connection
        proc, path = egressdoor.start(runtime, egress)
        data.update(egress_pid=proc.pid, egress_socket=path)
        return Door(path, egress=proc)
    return None


def close_door(door: Door | None, data: dict[str, Any]) -> None:
    """Stop the session's gateway (this process's own, or the one `data` names if it is still the user's)."""
    from . import egressdoor, launch

    if (door is not None and door.gateway is not None) or data.get("gateway_pid"):
        launch.stop(door.gateway if door is not None else None, data)
    if (door is not None and door.egress is not None) or data.get("egress_pid"):
        egressdoor.stop(door.egress if door is not None else None, data.get("egress_pid"), data.get("egress_socket"))
        data["egress_pid"] = None


def report_kernel_drops(netd_socket: str, session: str, level: str, data: dict[str, Any]) -> None:
    """Public mode: the kernel's drops of blocked ranges so far into the session's egress log, and one
    line on stderr. Call it before the sandbox or VM goes (the helper drops its counters with it)."""
    import sys

    from ..netd import client as netd
    from . import egressdoor

    if data.get("network_mode") != "public" or not data.get("egress_log"):
        return
    try:
        drops = netd.request(netd_socket, {"op": "drops", "session": session}, timeout=5).get("drops") or {}
    except (OSError, ValueError, netd.NetdError):
        return
    line = egressdoor.kernel_drops(Path(data["egress_log"]), session, level, drops)
    if line:
        print(line, file=sys.stderr, flush=True)
