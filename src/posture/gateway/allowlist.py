"""What a session may reach through its gateway: the network mode, the allowlist and the blocked ranges.

Entries of `[network] allow` (the user's config; a repo file may only shrink it):
  api.example.com       that name, any port
  *.pythonhosted.org    any name below pythonhosted.org (not the name itself), any port
  pypi.org:443          that name on that port only
  203.0.113.0/24        addresses in that range (a bare address is its own /32 or /128), any port

Modes: `public` (the gateway is not in the path; the kernel blocks the internal ranges),
`allowlist` (listed names, ranges and the profile's API hosts), `none` (the profile's API
hosts only). Standard library only: the gateway process and the config checker both use it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

MODES = ("public", "allowlist", "none")  # from the loosest to the strictest
CONFIG_KEY = "[network] allow"
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


def stricter(a: str, b: str) -> str:
    """The stricter of two modes."""
    return a if MODES.index(a) >= MODES.index(b) else b


@dataclass(frozen=True)
class Entry:
    """One parsed allowlist entry (`text` as the user wrote it, normalised)."""

    text: str
    name: str = ""  # a host name, or the suffix (".pythonhosted.org") of a wildcard
    wildcard: bool = False
    port: int | None = None
    net: IPNet | None = None

    def matches_name(self, host: str, port: int) -> bool:
        """True when this name entry allows `host`:`port`."""
        if self.net is not None or (self.port is not None and self.port != port):
            return False
        return host.endswith(self.name) and host != self.name[1:] if self.wildcard else host == self.name

    def covers(self, other: Entry) -> bool:
        """True when everything `other` allows, this entry allows too (a repo's entry may narrow a user's)."""
        if self.net is not None or other.net is not None:
            return self.net is not None and other.net is not None and other.net.version == self.net.version \
                and other.net.subnet_of(self.net)  # type: ignore[arg-type]
        if self.port is not None and other.port != self.port:
            return False
        if other.wildcard:
            return self.wildcard and other.name.endswith(self.name)
        return self.matches_name(other.name, other.port or self.port or 0) if self.wildcard else other.name == self.name


def host_name(value: str) -> str:
    """A lower-cased DNS name, or ValueError."""
    name = value.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{value!r} is not a host name")
    return name


def parse_entry(value: str) -> Entry:
    """One `[network] allow` entry, or ValueError naming the accepted forms."""
    forms = "expected a host name, *.domain, name:port or a CIDR such as 203.0.113.0/24"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{forms}, got {value!r}")
    text = value.strip().lower()
    try:
        net = ipaddress.ip_network(text, strict=False)
        return Entry(text=str(net), net=net)
    except ValueError:
        pass
    port: int | None = None
    name = text
    if text.count(":") == 1:
        name, _, port_text = text.partition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{forms}, got {value!r} (bad port)")
        port = int(port_text)
    wildcard = name.startswith("*.")
    try:
        bare = host_name(name[2:] if wildcard else name)
    except ValueError:
        raise ValueError(f"{forms}, got {value!r}") from None
    if wildcard and "." not in bare:
        raise ValueError(f"{forms}, got {value!r} (a wildcard needs a domain with a dot, like *.example.com)")
    return Entry(text=text, name=f".{bare}" if wildcard else bare, wildcard=wildcard, port=port)


def intersect(user: list[str], repo: list[str]) -> tuple[list[str], list[str]]:
    """A repo's list applied to the user's: (the effective list, the repo entries ignored because
    no user entry covers them). The result never allows anything the user's list does not."""
    user_entries = [parse_entry(u) for u in user]
    kept: list[str] = []
    ignored: list[str] = []
    for text in repo:
        entry = parse_entry(text)
        if any(u.covers(entry) for u in user_entries):
            if entry.text not in kept:
                kept.append(entry.text)
        else:
            ignored.append(entry.text)
    return kept, ignored


@dataclass(frozen=True)
class Verdict:
    """One decision: allowed or not, and the rule that decided (an entry, a blocked range, a mode)."""

    allowed: bool
    rule: str
    reason: str = ""


@dataclass
class Rules:
    """One session's egress rules, as the gateway applies them."""

    mode: str = "none"
    allow: list[str] = field(default_factory=list)
    api_hosts: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # never reached, whatever a name resolves to

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"network mode {self.mode!r} is not one of {', '.join(MODES)}")
        self.entries = [parse_entry(a) for a in self.allow] if self.mode == "allowlist" else []
        self.api = [host_name(h) for h in self.api_hosts]
        self.nets = [ipaddress.ip_network(n, strict=False) for n in self.blocked]

    def plan(self) -> dict[str, object]:
        """The rules as the gateway process receives them."""
        return {"mode": self.mode, "allow": list(self.allow), "api_hosts": list(self.api_hosts), "blocked": list(self.blocked)}

    def check_name(self, host: str, port: int) -> Verdict:
        """May the session ask for `host`:`port` (a name, or an address literal)?"""
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            ip = None
        if ip is not None:
            return self._check_literal(ip)
        name = host.lower().rstrip(".")
        if name in self.api:
            return Verdict(True, f"api:{name}")
        if self.mode == "public":
            return Verdict(True, "mode public")
        for entry in self.entries:
            if entry.matches_name(name, port):
                return Verdict(True, entry.text)
        if self.mode == "none":
            return Verdict(False, "mode none", "only the agent's API hosts are reachable in mode none")
        return Verdict(False, "mode allowlist", "not in the allowlist")

    def _check_literal(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Verdict:
        listed = [e for e in self.entries if e.net is not None and e.net.version == ip.version and ip in e.net]
        if listed:
            return Verdict(True, listed[0].text)
        blocked = self.blocked_range(str(ip))
        if blocked:
            return Verdict(False, blocked, "an internal range posture always blocks")
        if self.mode == "public":
            return Verdict(True, "mode public")
        return Verdict(False, f"mode {self.mode}", "an address literal in no listed range")

    def blocked_range(self, address: str) -> str | None:
        """The blocked range holding `address`, or None."""
        ip = ipaddress.ip_address(address)
        for net in self.nets:
            if net.version == ip.version and ip in net:
                return str(net)
        return None

    def check_address(self, address: str) -> Verdict:
        """May an allowed name's resolved `address` be dialled? (Not in a blocked range, unless a listed range covers it.)"""
        ip = ipaddress.ip_address(address)
        if any(e.net is not None and e.net.version == ip.version and ip in e.net for e in self.entries):
            return Verdict(True, "listed range")
        blocked = self.blocked_range(address)
        if blocked:
            return Verdict(False, blocked, "the name resolves to an internal range posture always blocks")
        return Verdict(True, "")
