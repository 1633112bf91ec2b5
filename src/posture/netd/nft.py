"""The nftables side of L2's network policy: ruleset text, load, verify, per-session rules.

One table (`inet posture` by default) in the network helper's network namespace:
every socket made from the helper's cgroup (slirp4netns of every session lives there)
is refused every blocked destination. `socket cgroupv2` stores the cgroup's numeric
id when the rule is loaded, so `verify` reads the ids back from the kernel
(`nft --debug=netlink`) and compares them with the cgroup's id now: a deleted and
re-created cgroup, or an unloaded rule, fails verification (and posture refuses).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

NFT = "nft"


class NftError(RuntimeError):
    """nft refused a command; the message is its stderr."""


class _Lib:
    """libnftables through ctypes: the same engine as the nft binary, without a process per call."""

    DEBUG_NETLINK = 0x8
    OUTPUT_HANDLE = 1 << 3

    def __init__(self) -> None:
        import ctypes

        lib = ctypes.CDLL("libnftables.so.1")
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        lib.nft_ctx_new.restype = vp
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [vp]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).restype = cp
            getattr(lib, name).argtypes = [vp]
        lib.nft_run_cmd_from_buffer.argtypes = [vp, cp]
        lib.nft_ctx_output_set_debug.argtypes = [vp, ctypes.c_uint]
        lib.nft_ctx_output_set_flags.argtypes = [vp, ctypes.c_uint]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def run(self, text: str, debug: bool, handles: bool) -> str:
        lib = self.lib
        lib.nft_ctx_output_set_debug(self.ctx, self.DEBUG_NETLINK if debug else 0)
        lib.nft_ctx_output_set_flags(self.ctx, self.OUTPUT_HANDLE if handles else 0)
        rc = lib.nft_run_cmd_from_buffer(self.ctx, text.encode())
        out = (lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(f"nft: {err.strip() or out.strip()}")
        return out


_lib: _Lib | None | bool = None


def run(text: str, debug: bool = False, handles: bool = False) -> str:
    """Run nft command(s) `text` (one per line, or a ruleset file's text); return the output.

    Uses libnftables in-process when it is there (callers serialise: it is not thread-safe),
    else the nft binary.
    """
    global _lib
    if _lib is None:
        try:
            _lib = _Lib()
        except (OSError, AttributeError):
            _lib = False
    if isinstance(_lib, _Lib):
        return _lib.run(text, debug, handles)
    argv = [NFT, *(["--debug=netlink"] if debug else []), *(["-a"] if handles else []), "-f", "-"]
    proc = subprocess.run(argv, input=text, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NftError(f"nft: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _elements(nets: list[str]) -> str:
    return ", ".join(nets)


def _split(nets: list[str]) -> tuple[list[str], list[str]]:
    v4 = [n for n in nets if ipaddress.ip_network(n, strict=False).version == 4]
    v6 = [n for n in nets if ipaddress.ip_network(n, strict=False).version == 6]
    return v4, v6


def ruleset(table: str, cgroup_path: str, level: int, blocked: list[str], dns: list[str]) -> str:
    """The table text: sockets of cgroup `cgroup_path` (nft path, at `level`) may not reach `blocked`.

    `dns` are the resolvers of the helper's network namespace: port 53 to them stays open
    (slirp4netns forwards the sandbox's DNS there) even when they sit in a blocked range.
    """
    v4, v6 = _split(blocked)
    d4, d6 = _split([f"{a}/{32 if ':' not in a else 128}" for a in dns])
    match = f'socket cgroupv2 level {level} "{cgroup_path}"'
    lines = [
        f"add table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        f"  set blocked4 {{ type ipv4_addr; flags interval; elements = {{ {_elements(v4)} }} }}" if v4 else "  set blocked4 { type ipv4_addr; flags interval; }",
        f"  set blocked6 {{ type ipv6_addr; flags interval; elements = {{ {_elements(v6)} }} }}" if v6 else "  set blocked6 { type ipv6_addr; flags interval; }",
        f"  set dns4 {{ type ipv4_addr; flags interval; elements = {{ {_elements(d4)} }} }}" if d4 else "  set dns4 { type ipv4_addr; flags interval; }",
        f"  set dns6 {{ type ipv6_addr; flags interval; elements = {{ {_elements(d6)} }} }}" if d6 else "  set dns6 { type ipv6_addr; flags interval; }",
        "  chain sessions {",
        "  }",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        f"    {match} jump sessions",
        f"    {match} meta l4proto {{ tcp, udp }} th dport 53 ip daddr @dns4 accept",
        f"    {match} meta l4proto {{ tcp, udp }} th dport 53 ip6 daddr @dns6 accept",
        f"    {match} ip daddr @blocked4 meta l4proto tcp reject with tcp reset",
        f"    {match} ip daddr @blocked4 reject",
        f"    {match} ip6 daddr @blocked6 meta l4proto tcp reject with tcp reset",
        f"    {match} ip6 daddr @blocked6 reject",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


BASE_RULES = 7  # rules in `output` that match the helper's cgroup


def load(text: str) -> None:
    """Load a ruleset atomically (one nft transaction)."""
    run(text)


def remove_table(table: str) -> None:
    """Delete the table if it exists."""
    run(f"add table inet {table}\ndelete table inet {table}\n")


_RULE_HEAD = re.compile(r"^inet (\S+) (\w+) (\d+)( \d+)?\s*$")
_SET_HEAD = re.compile(r"^inet (\S+) @(\w+)\s*$")
_CG_LOAD = re.compile(r"\[ socket load cgroupv2 => reg (\d+) ")
_CMP = re.compile(r"\[ cmp eq reg (\d+) (0x[0-9a-f]+) (0x[0-9a-f]+) \]")


def parse_debug(out: str) -> tuple[dict[str, list[list[int]]], dict[str, int]]:
    """From `nft --debug=netlink list table` output: chain -> [cgroup ids per rule], set -> element lines."""
    chains: dict[str, list[list[int]]] = {}
    sets: dict[str, int] = {}
    current: list[int] | None = None
    current_set: str | None = None
    reg: str | None = None
    for raw in out.splitlines():
        line = raw.strip()
        m = _SET_HEAD.match(line)
        if m:
            current_set, current, reg = m.group(2), None, None
            sets[current_set] = 0
            continue
        m = _RULE_HEAD.match(line)
        if m:
            current_set, reg = None, None
            current = []
            chains.setdefault(m.group(2), []).append(current)
            continue
        if current_set is not None and line.startswith("element "):
            sets[current_set] += 1
            continue
        m = _CG_LOAD.search(line)
        if m and current is not None:
            reg = m.group(1)
            continue
        m = _CMP.search(line)
        if m and current is not None and reg is not None and m.group(1) == reg:
            current.append(int(m.group(2), 16) | (int(m.group(3), 16) << 32))
            reg = None
    return chains, sets


NETLINK_NETFILTER = 12
NFT_MSG_GETGEN, NFT_MSG_NEWGEN, NFNL_SUBSYS_NFTABLES, NFTA_GEN_ID = 16, 15, 10, 1


def generation() -> int | None:
    """The ruleset generation of this network namespace (NFT_MSG_GETGEN), or None when it cannot
    be read. The kernel bumps it on every committed change to any table, chain, rule, set or
    element, so an unchanged generation means an unchanged ruleset."""
    import socket
    import struct

    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as sock:
            sock.settimeout(2)
            sock.send(struct.pack("=IHHII", 20, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, 0x1, 1, 0) + struct.pack("=BBH", 0, 0, 0))
            data = sock.recv(8192)
    except OSError:
        return None
    if len(data) < 20:
        return None
    length, kind = struct.unpack_from("=IH", data, 0)
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
        return None
    offset = 20  # nlmsghdr + nfgenmsg, then attributes
    while offset + 4 <= min(length, len(data)):
        alen, atype = struct.unpack_from("=HH", data, offset)
        if alen < 4:
            return None
        if atype & 0x3FFF == NFTA_GEN_ID and alen >= 8:
            return struct.unpack_from(">I", data, offset + 4)[0]
        offset += (alen + 3) & ~3
    return None


def cgroup_ids(table: str, chain: str) -> list[list[int]]:
    """For each rule of `chain`, the cgroup ids its `socket cgroupv2` matches compare against."""
    chains, _ = parse_debug(run(f"list table inet {table}", debug=True))
    return chains.get(chain, [])


@dataclass
class Verdict:
    """Whether the helper's rule holds for its cgroup as it is now."""

    ok: bool
    detail: str


def verify(table: str, current_id: int | None, blocked: list[str]) -> Verdict:
    """Check that every base rule of `table` matches cgroup id `current_id` and the sets are filled."""
    if current_id is None:
        return Verdict(False, "the helper's cgroup does not exist")
    try:
        chains, sets = parse_debug(run(f"list table inet {table}", debug=True))
    except NftError as exc:
        return Verdict(False, f"the nftables rule is not loaded ({exc})")
    rules = chains.get("output", [])
    matched = [ids for ids in rules if ids]
    if len(matched) != BASE_RULES or len(rules) != len(matched):
        return Verdict(False, f"the nftables chain inet {table} output has {len(matched)} cgroup rules of {len(rules)}, expected {BASE_RULES}")
    stale = sorted({i for ids in matched for i in ids if i != current_id})
    if stale:
        return Verdict(False, f"the nftables rule matches cgroup id {stale[0]} but the cgroup's id is now {current_id} (deleted and re-created)")
    v4, v6 = _split(blocked)
    for name, want in (("blocked4", v4), ("blocked6", v6)):
        if name not in sets or (want and sets[name] == 0):
            return Verdict(False, f"the nftables set {name} is missing or empty")
    return Verdict(True, f"rule loaded for cgroup id {current_id}")


def add_session_rules(table: str, cgroup_path: str, level: int, blocked: list[str], comment: str, count: tuple[str, ...] = ()) -> bool:
    """Extra blocks for one session's slirp4netns cgroup (inserted in the `sessions` chain), after a
    counter per range of `count` (the ranges the table blocks for it: read back by `drop_counts`).
    True when one transaction was committed, False when there was nothing to add."""
    v4, v6 = _split(blocked)
    match = f'socket cgroupv2 level {level} "{cgroup_path}"'
    lines = []
    for i, net in enumerate(count):  # named counters: listing them does not walk the cgroup tree (listing rules does)
        family, dns = ("ip6", "@dns6") if ":" in net else ("ip", "@dns4")
        lines.append(f"add counter inet {table} {comment}_d{i}")
        lines.append(f'add rule inet {table} sessions {match} {family} daddr {net} {family} daddr != {dns} counter name "{comment}_d{i}" '
                     f'comment "{comment} drop {net}"')
    if v4:
        lines.append(f'add rule inet {table} sessions {match} ip daddr {{ {_elements(v4)} }} reject comment "{comment}"')
    if v6:
        lines.append(f'add rule inet {table} sessions {match} ip6 daddr {{ {_elements(v6)} }} reject comment "{comment}"')
    if not lines:
        return False
    run("\n".join(lines) + "\n")
    return True


def _counters(table: str, comment: str) -> dict[int, int]:
    out = run(f"list counters table inet {table}")
    found = re.finditer(r"counter " + re.escape(comment) + r"_d(\d+) \{\s*packets (\d+)", out)
    return {int(m.group(1)): int(m.group(2)) for m in found}


def drop_counts(table: str, comment: str, ranges: tuple[str, ...]) -> dict[str, int]:
    """Packets the kernel dropped per blocked range (`ranges`, as given to add_session_rules' `count`) for
    the session whose rules carry `comment`."""
    return {ranges[i]: n for i, n in _counters(table, comment).items() if n and i < len(ranges)}


def remove_session_rules(table: str, comment: str | list[str]) -> bool:
    """Delete the `sessions` rules (and drop counters) carrying `comment` (or any of a list: one listing, one commit).
    True when that one transaction was committed; False when there was nothing to delete (or no chain to list)."""
    comments = [comment] if isinstance(comment, str) else comment
    try:
        out = run(f"list chain inet {table} sessions", handles=True)
    except NftError:
        return False
    alternatives = "|".join(re.escape(c) for c in comments)
    handles = [m.group(1) for m in re.finditer(r'comment "(?:' + alternatives + r')(?: drop [^"]*)?" # handle (\d+)', out)]
    lines = [f"delete rule inet {table} sessions handle {h}\n" for h in handles]
    try:
        lines += [f"delete counter inet {table} {c}_d{i}\n" for c in comments for i in _counters(table, c)]
    except NftError:
        pass
    if not lines:
        return False
    run("".join(lines))
    return True


def resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    """The nameservers of `path` (the DNS exception of the ruleset)."""
    out = []
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
                except ValueError:
                    continue
    except OSError:
        pass
    return out
