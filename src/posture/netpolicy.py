"""Which destinations a sandbox may not reach: one definition, enforced by every local level."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

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


MODES = ("public", "allowlist", "none")


@dataclass(frozen=True)
class NetworkPolicy:
    """Destinations blocked for every outbound socket of a sandbox, and the session's network mode:
    `public` (everything else open), `allowlist` or `none` (no way out but the gateway, which allows
    `allow` plus `api_hosts`, or `api_hosts` only)."""

    blocked: tuple[str, ...] = DEFAULT_BLOCKED
    extra: tuple[str, ...] = field(default=())
    mode: str = "public"
    allow: tuple[str, ...] = field(default=())  # the effective allowlist (empty unless mode is allowlist)
    api_hosts: tuple[str, ...] = field(default=())  # the profile's API hosts, reachable in every mode

    @property
    def through_gateway(self) -> bool:
        """True when the session's only way out is the gateway's proxy."""
        return self.mode != "public"

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


def policy_for(extra_blocks: list[str], mode: str = "public", allow: list[str] | None = None,
               api_hosts: list[str] | None = None) -> NetworkPolicy:
    """The default policy plus extra blocked CIDRs from the user's or the repo's config, in `mode`."""
    return NetworkPolicy(extra=tuple(extra_blocks), mode=mode, allow=tuple(allow or ()) if mode == "allowlist" else (),
                         api_hosts=tuple(api_hosts or ()))


def report(settings: Any, flag: str | None, api_hosts: list[str], level: str) -> dict[str, Any]:
    """What `explain` says of the network: the mode and who chose it, the effective allowlist,
    what the repo file asked for (applied or ignored), and where the mode is not posture's to enforce."""
    mode = effective_mode(settings.user_network_mode, settings.repo_network_mode, flag)
    chosen = "--network" if flag else "config" if settings.user_network_mode != "public" else "default"
    if mode != (flag or settings.user_network_mode):
        chosen = "repo file"
    notes = {
        "l4": "at L4 posture does not own the remote host's firewall: the mode is not enforced there "
              "(the gateway still carries the agent's API over posture's SSH connection)",
        "l3": "at L3 the guest has no network interface in this mode: its one way out is the gateway's door (a virtio-serial port)",
    }
    return {
        "mode": mode,
        "chosen_by": chosen,
        "allow": list(settings.network_allow) if mode == "allowlist" else [],
        "api_hosts": list(api_hosts),
        "blocked": policy_for(settings.network_block).all_blocked(),
        "repo_asked": [a for a in settings.repo_asked if a.startswith("network.")],
        "repo_ignored": [{"key": k, "why": w} for k, w in settings.repo_ignored if k.startswith("network.")],
        "enforced": level in ("l2", "l3"),
        "note": notes.get(level, "") if (level == "l4" or mode != "public") else "",
    }


def stricter(a: str, b: str) -> str:
    """The stricter of two network modes."""
    return a if MODES.index(a) >= MODES.index(b) else b


def effective_mode(user_mode: str, repo_mode: str | None, flag: str | None) -> str:
    """The session's mode: the user's own choice (`--network`, else the user's config), moved toward
    `none` by the repo file (never away from it)."""
    return stricter(flag or user_mode, repo_mode or "public")
