"""What the network checks try: internal addresses, the host's loopback, and a public address.

Chosen from this machine's own tables (/proc/net: routes, addresses, neighbours, listening
sockets, /etc/resolv.conf) and the blocked list (netpolicy.py); no lookup leaves the machine.
An automatic target counts only when it answers from the host (a refusal inside proves
nothing about a port nobody listens on): `confirm` tries each one from here first.
POSTURE_VERIFY_TARGETS (JSON: {"internal": ["addr:port", ...], "loopback": [...], "public": [...]})
replaces the automatic choice, per key, with targets the caller knows answer.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..netpolicy import NetworkPolicy

ENV = "POSTURE_VERIFY_TARGETS"
KINDS = ("internal", "loopback", "public")
SERVICE_PORTS = (443, 80, 53, 22, 8080)  # tried on a gateway or a neighbour
PUBLIC_WELL_KNOWN = (("1.1.1.1", 443), ("8.8.8.8", 443), ("9.9.9.9", 443))
PUBLIC_WELL_KNOWN6 = (("2606:4700:4700::1111", 443), ("2001:4860:4860::8888", 443))
METADATA = (("169.254.169.254", 80), ("100.100.100.100", 53))
SLIRP_HOST = "10.0.2.2"  # the host's loopback as user-mode networking (slirp4netns, QEMU) offers it
CONFIRM_TIMEOUT = 1.5
MAX_NEIGHBOURS = 4
PROC_NET = Path("/proc/net")


@dataclass(frozen=True)
class Target:
    """One address and port to try, and why it was chosen."""

    addr: str
    port: int
    why: str

    @property
    def key(self) -> str:
        """How the probe names it: addr:port."""
        return f"{self.addr}:{self.port}"


@dataclass
class HostFacts:
    """What this machine's tables say (read by `read_host`, or given by a test)."""

    gateways: list[str] = field(default_factory=list)  # default-route gateways, v4 and v6
    default4: bool = False
    default6: bool = False
    addresses: list[str] = field(default_factory=list)  # this host's own addresses
    neighbours: list[str] = field(default_factory=list)  # ARP / neighbour entries
    listeners: list[tuple[str, int]] = field(default_factory=list)  # listening TCP sockets (addr, port)
    resolvers: list[str] = field(default_factory=list)


@dataclass
class Targets:
    """The chosen targets per kind, and what could not be chosen."""

    internal: list[Target] = field(default_factory=list)
    loopback: list[Target] = field(default_factory=list)
    public: list[Target] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # kind -> why it has no target
    given: set[str] = field(default_factory=set)  # kinds that came from POSTURE_VERIFY_TARGETS

    def of(self, kind: str) -> list[Target]:
        """The targets of one kind."""
        return list(getattr(self, kind))

    def all(self) -> list[Target]:
        """Every target, for the probe's config."""
        return [*self.internal, *self.loopback, *self.public]


# ---------------------------------------------------------------- reading the host

def _hex4(text: str) -> str:
    return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(text, 16)))


def _hex6(text: str) -> str:
    return str(ipaddress.IPv6Address(bytes.fromhex(text)))


def _hex6_words(text: str) -> str:
    """/proc/net/tcp6 writes an address as four host-order 32-bit words."""
    raw = b"".join(struct.pack("<I", int(text[i:i + 8], 16)) for i in range(0, 32, 8))
    return str(ipaddress.IPv6Address(raw))


def _lines(name: str) -> list[str]:
    try:
        return (PROC_NET / name).read_text().splitlines()[1:]
    except OSError:
        return []


def _addresses4() -> list[str]:
    found = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _index, name in socket.if_nameindex():
            try:
                req = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
                found.append(socket.inet_ntoa(req[20:24]))
            except OSError:
                continue
    finally:
        s.close()
    return found


def read_host() -> HostFacts:
    """This machine's routes, addresses, neighbours, listeners and resolvers (its own network namespace)."""
    facts = HostFacts()
    for line in _lines("route"):
        cols = line.split()
        if len(cols) > 7 and cols[1] == "00000000" and cols[7] == "00000000":
            facts.default4 = True
            if cols[2] != "00000000":
                facts.gateways.append(_hex4(cols[2]))
    for line in (PROC_NET / "ipv6_route").read_text().splitlines() if (PROC_NET / "ipv6_route").exists() else []:
        cols = line.split()
        if len(cols) > 9 and cols[0] == "0" * 32 and cols[1] == "00" and cols[9] != "lo":
            facts.default6 = True
            if cols[4] != "0" * 32:
                facts.gateways.append(_hex6(cols[4]))
    facts.addresses = _addresses4()
    for line in (PROC_NET / "if_inet6").read_text().splitlines() if (PROC_NET / "if_inet6").exists() else []:
        facts.addresses.append(_hex6(line.split()[0]))
    for line in _lines("arp"):
        cols = line.split()
        if len(cols) > 3 and cols[2] != "0x0":
            facts.neighbours.append(cols[0])
    for name, conv in (("tcp", _hex4), ("tcp6", _hex6_words)):
        for line in _lines(name):
            cols = line.split()
            if len(cols) > 3 and cols[3] == "0A":
                addr, port = cols[1].rsplit(":", 1)
                facts.listeners.append((conv(addr), int(port, 16)))
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                facts.resolvers.append(parts[1].split("%")[0])
    except OSError:
        pass
    return facts


# ---------------------------------------------------------------- choosing

def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def choose(facts: HostFacts, policy: NetworkPolicy) -> Targets:
    """Candidate targets from the host's facts (not yet confirmed to answer)."""
    t = Targets()
    seen: set[str] = set()

    def add(kind: str, addr: str, port: int, why: str) -> None:
        ip = _ip(addr)
        if ip is None or ip.is_unspecified or ip.is_multicast or f"{addr}:{port}" in seen:
            return
        seen.add(f"{addr}:{port}")
        getattr(t, kind).append(Target(str(ip), port, why))

    loop_ports = sorted({port for addr, port in facts.listeners if (ip := _ip(addr)) is not None and (ip.is_loopback or ip.is_unspecified)})
    for port in loop_ports[:4]:
        add("loopback", SLIRP_HOST, port, f"the host's loopback as the session's network offers it (something listens on port {port} here)")
        add("loopback", "127.0.0.1", port, f"port {port} listens on this host's loopback")
    own = [a for a in facts.addresses if (ip := _ip(a)) is not None and not ip.is_loopback and not ip.is_link_local and policy.blocks(a)]
    wildcard = sorted({port for addr, port in facts.listeners if (ip := _ip(addr)) is not None and ip.is_unspecified})
    for addr in own:
        for port in sorted({p for a, p in facts.listeners if a == addr} | set(wildcard))[:3]:
            add("internal", addr, port, f"this host's own address {addr} (port {port} listens)")
    for gw in facts.gateways:
        if policy.blocks(gw):
            for port in SERVICE_PORTS:
                add("internal", gw, port, f"the default gateway {gw}")
    for addr in [a for a in facts.neighbours if policy.blocks(a)][:MAX_NEIGHBOURS]:
        for port in SERVICE_PORTS:
            add("internal", addr, port, f"a neighbour on the local network ({addr})")
    for addr, port in METADATA:
        add("internal", addr, port, "the cloud metadata service" if port == 80 else "Tailscale's MagicDNS resolver")
    if not (facts.default4 or facts.default6):
        t.notes["public"] = "this host has no default route: it has no public internet to compare with"
        return t
    for addr in facts.resolvers:
        if _ip(addr) is not None and not policy.blocks(addr):
            add("public", addr, 53, f"the public resolver {addr} from /etc/resolv.conf")
    for gw in facts.gateways:
        if not policy.blocks(gw):
            for port in SERVICE_PORTS:
                add("public", gw, port, f"the default gateway {gw} (a public address)")
    if facts.default4:
        for addr, port in PUBLIC_WELL_KNOWN:
            add("public", addr, port, f"the public anycast address {addr}")
    if facts.default6:
        for addr, port in PUBLIC_WELL_KNOWN6:
            add("public", addr, port, f"the public anycast address {addr}")
    return t


def answers(addr: str, port: int, timeout: float = CONFIRM_TIMEOUT) -> bool:
    """True when a TCP connection to addr:port succeeds from here."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((addr, port))
            return True
        except OSError:
            return False


def confirm(candidates: Targets, limit: int = 4) -> Targets:
    """Keep the candidates that answer from the host (tried in parallel), at most `limit` per kind."""
    every = candidates.all()
    ok: dict[str, bool] = {}

    def go(target: Target) -> None:
        ok[target.key] = answers(target.addr, target.port)
    threads = [threading.Thread(target=go, args=(x,), daemon=True) for x in every]
    for th in threads:
        th.start()
    for th in threads:
        th.join(CONFIRM_TIMEOUT + 1)
    out = Targets(notes=dict(candidates.notes), given=set(candidates.given))
    for kind in KINDS:
        kept = [x for x in candidates.of(kind) if ok.get(x.key)]
        if kind == "loopback":
            # 10.0.2.2 (the session's view of the host's loopback) is not reachable from the host
            # itself: it counts when the same port answers on the host's loopback.
            live = {x.port for x in candidates.of(kind) if x.addr != SLIRP_HOST and ok.get(x.key)}
            kept = [x for x in candidates.of(kind) if x.port in live]
        setattr(out, kind, kept[:limit] if kind != "loopback" else kept[: 2 * limit])
        if not kept and kind not in out.notes:
            tried = len(candidates.of(kind))
            out.notes[kind] = (f"none of the {tried} {kind} addresses this host knows answered from the host itself, so a refusal inside would prove nothing"
                               if tried else f"this host knows no {kind} address to try")
    return out


def _only(t: Targets, kinds: set[str]) -> Targets:
    for kind in set(KINDS) - kinds:
        setattr(t, kind, [])
        t.notes[kind] = f"{kind} targets are not tried here"
    return t


def parse_env(value: str) -> dict[str, list[Target]]:
    """POSTURE_VERIFY_TARGETS: {"internal"|"loopback"|"public": ["addr:port" | "[v6]:port", ...]} (exit 64 when malformed)."""
    fix = 'set it to JSON like {"public": ["198.51.100.10:443"], "internal": ["192.168.1.1:80"], "loopback": ["10.0.2.2:8080"]}'
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise UsageError(f"{ENV}: not JSON ({exc})", fix=fix) from None
    if not isinstance(doc, dict) or not set(doc) <= set(KINDS):
        raise UsageError(f"{ENV}: expected an object with the keys {', '.join(KINDS)}", fix=fix)
    out: dict[str, list[Target]] = {}
    for kind, items in doc.items():
        if not isinstance(items, list):
            raise UsageError(f"{ENV}: {kind}: expected a list of addr:port", fix=fix)
        out[kind] = [_target(kind, item, fix) for item in items]
    return out


def _target(kind: str, item: object, fix: str) -> Target:
    text = str(item)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or _ip(host) is None:
        raise UsageError(f"{ENV}: {kind}: {text!r} is not addr:port", fix=fix)
    return Target(str(_ip(host)), int(port), f"given in {ENV}")


def pick(policy: NetworkPolicy, environ: Mapping[str, str] | None = None, kinds: tuple[str, ...] = KINDS) -> Targets:
    """The targets of `kinds` for this run: POSTURE_VERIFY_TARGETS where given, else confirmed automatic ones."""
    env = os.environ if environ is None else environ
    given = {k: v for k, v in (parse_env(env[ENV]) if env.get(ENV) else {}).items() if k in kinds}
    wanted = set(kinds) - set(given)
    auto = confirm(_only(choose(read_host(), policy), wanted)) if wanted else Targets()
    for kind in set(KINDS) - set(kinds):
        auto.notes.pop(kind, None)
    for kind, items in given.items():
        setattr(auto, kind, items)
        auto.given.add(kind)
        auto.notes.pop(kind, None)
        if not items:
            auto.notes[kind] = f"{ENV} gives no {kind} target"
    return auto


class LoopbackListener:
    """A listener on this host's loopback that greets and closes: a target that surely answers here."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn.sendall(b"posture verify loopback\n")
            except OSError:
                pass
            finally:
                conn.close()

    def targets(self) -> list[Target]:
        """The session's two ways at this listener."""
        why = f"posture verify's own listener on this host's loopback (port {self.port})"
        return [Target(SLIRP_HOST, self.port, why), Target("127.0.0.1", self.port, why)]

    def close(self) -> None:
        """Stop listening."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


PEER_PORTS = (22, 80, 443, 445, 3389, 5432, 5900, 8080)
MAX_PEERS = 16


def tailnet_peers(doc: dict, l4_host: str) -> list[Target]:
    """Other machines of the tailnet (this one included, the L4 host itself not) on common ports,
    from a `tailscale status --json` document."""
    from ..l4 import tailscale

    skip = tailscale.match(doc, l4_host) if l4_host else None
    machines = []
    me = doc.get("Self")
    if isinstance(me, dict):
        machines.append(("this machine", me.get("TailscaleIPs") or []))
    for peer in tailscale.peers(doc):
        if skip is not None and peer.ips == skip.ips:
            continue
        if peer.online:
            machines.append((peer.dns_name or peer.host_name, list(peer.ips)))
    out: list[Target] = []
    for name, ips in machines[:MAX_PEERS]:
        v4 = [ip for ip in ips if ":" not in str(ip)]
        for ip in (v4 or list(ips))[:1]:
            out += [Target(str(ip), port, f"tailnet peer {name}") for port in PEER_PORTS]
    return out
