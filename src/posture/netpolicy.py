"""Which destinations a sandbox may not reach: one definition, enforced by every local level."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

# Tailscale (CGNAT range, MagicDNS resolver, IPv6 ULA), RFC1918, link-local and cloud
# metadata, IPv6 ULA and link-local, and loopback (the host's own services).
DEFAULT_BLOCKED: tuple[str, ...] = (
    "100.64.0.0/10",
    "100.100.100.100/32",
    "fd7a:115c:a1e0::/48",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "0.0.0.0/8",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
)


@dataclass(frozen=True)
class NetworkPolicy:
    """Destinations blocked for every outbound socket of a sandbox; everything else is open."""

    blocked: tuple[str, ...] = DEFAULT_BLOCKED
    extra: tuple[str, ...] = field(default=())

    def all_blocked(self) -> list[str]:
        """Every blocked network, defaults first, collapsed per family."""
        nets = [ipaddress.ip_network(n) for n in (*self.blocked, *self.extra)]
        v4 = ipaddress.collapse_addresses([n for n in nets if n.version == 4])
        v6 = ipaddress.collapse_addresses([n for n in nets if n.version == 6])
        return [str(n) for n in (*v4, *v6)]

    def ipv4(self) -> list[str]:
        """Blocked IPv4 networks."""
        return [n for n in self.all_blocked() if ":" not in n]

    def ipv6(self) -> list[str]:
        """Blocked IPv6 networks."""
        return [n for n in self.all_blocked() if ":" in n]

    def blocks(self, address: str) -> bool:
        """True when `address` falls in a blocked network."""
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(n) for n in self.all_blocked() if ipaddress.ip_network(n).version == ip.version)


def policy_for(extra_blocks: list[str]) -> NetworkPolicy:
    """The default policy plus extra blocked CIDRs from the user's or the repo's config."""
    return NetworkPolicy(extra=tuple(extra_blocks))
