"""Find the L4 host among the tailnet's peers with `tailscale status --json`.

The peer named in `[l4] host` is matched by Tailscale IP, then by full MagicDNS name,
then by the first label of that name. The tailnet must be up (BackendState Running)
and the peer Online and not Expired; every failure is one line with its fix (exit 69).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ..errors import Unavailable

TIMEOUT = 15.0


@dataclass(frozen=True)
class Peer:
    """One tailnet peer as `tailscale status --json` describes it."""

    host_name: str
    dns_name: str  # "name.tailnet-xyz.ts.net" (trailing dot removed)
    ips: tuple[str, ...]
    online: bool
    expired: bool
    ssh_host_keys: tuple[str, ...] = field(default=())

    @property
    def ip(self) -> str:
        """The address to connect to: the first IPv4 Tailscale address, else the first one."""
        for ip in self.ips:
            if ":" not in ip:
                return ip
        return self.ips[0]

    @property
    def label(self) -> str:
        """The first label of the MagicDNS name (what users type)."""
        return self.dns_name.split(".", 1)[0]


def cli() -> str:
    """Path of the `tailscale` CLI; exit 69 when it is not installed."""
    path = shutil.which("tailscale")
    if not path:
        raise Unavailable("the tailscale CLI is not on PATH", fix="install Tailscale (https://tailscale.com/download) and run `tailscale up`")
    return path


def status() -> dict[str, Any]:
    """The parsed output of `tailscale status --json`."""
    exe = cli()
    try:
        proc = subprocess.run([exe, "status", "--json"], capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"`{exe} status --json` did not answer within {TIMEOUT:.0f}s", fix="check tailscaled is running (`tailscale status`)") from None
    try:
        doc = json.loads(proc.stdout or b"null")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise Unavailable(
            f"`tailscale status --json` failed (exit {proc.returncode}): {why[-1] if why else 'no JSON output'}",
            fix="start tailscaled and run `tailscale up`",
        )
    return doc


def _peer(raw: dict[str, Any]) -> Peer:
    return Peer(
        host_name=str(raw.get("HostName") or ""),
        dns_name=str(raw.get("DNSName") or "").rstrip(".").lower(),
        ips=tuple(str(ip) for ip in raw.get("TailscaleIPs") or ()),
        online=bool(raw.get("Online")),
        expired=bool(raw.get("Expired")),
        ssh_host_keys=tuple(str(k) for k in raw.get("sshHostKeys") or ()),
    )


def peers(doc: dict[str, Any]) -> list[Peer]:
    """Every peer in a status document (never Self)."""
    table = doc.get("Peer") or {}
    return [_peer(raw) for raw in table.values() if isinstance(raw, dict)] if isinstance(table, dict) else []


def match(doc: dict[str, Any], host: str) -> Peer | None:
    """The peer `host` names: by Tailscale IP, then full MagicDNS name, then its first label."""
    want = host.strip().rstrip(".").lower()
    everyone = peers(doc)
    try:
        addr = ipaddress.ip_address(want)
    except ValueError:
        addr = None
    if addr is not None:
        for peer in everyone:
            if any(ipaddress.ip_address(ip) == addr for ip in peer.ips if _is_ip(ip)):
                return peer
        return None
    for peer in everyone:
        if peer.dns_name and peer.dns_name == want:
            return peer
    if "." not in want:
        found = [p for p in everyone if p.label == want]
        if len(found) == 1:
            return found[0]
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def find_peer(host: str, doc: dict[str, Any] | None = None) -> Peer:
    """The usable peer `host` names: the tailnet is Running, the peer Online and not Expired (else exit 69)."""
    doc = status() if doc is None else doc
    state = doc.get("BackendState")
    if state != "Running":
        fix = "log in with `tailscale up`" if state in ("NeedsLogin", "NeedsMachineAuth") else "run `tailscale up`"
        raise Unavailable(f"tailscale is not running (BackendState {state or 'missing'})", fix=fix)
    peer = match(doc, host)
    if peer is None:
        raise Unavailable(
            f"[l4] host {host!r} is not a peer of this tailnet",
            fix="set [l4] host to a peer's Tailscale IP, MagicDNS name or its first label (see `tailscale status`)",
        )
    name = peer.dns_name or peer.host_name or host
    if peer.expired:
        raise Unavailable(f"tailnet peer {name} has an expired node key", fix=f"re-authenticate {name} (`tailscale up` on it) or disable key expiry for it")
    if not peer.online:
        raise Unavailable(f"tailnet peer {name} is offline", fix=f"start {name} and check `tailscale status` lists it online")
    if not peer.ips:
        raise Unavailable(f"tailnet peer {name} has no Tailscale IP", fix="check `tailscale status --json` for the peer")
    return peer
