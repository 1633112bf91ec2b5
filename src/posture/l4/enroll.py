"""`posture l4 enroll`: pin the L4 host's SSH host key in posture's own known_hosts.

The key the tailnet advertises for the peer (`sshHostKeys` in `tailscale status --json`)
is vouched for by the tailnet's coordination server, so it is pinned as is (and checked
against what the host presents). Without it, the key the host presents is shown by its
SHA256 fingerprint for the user to compare out of band; `--yes` accepts it (scripts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import Refused, Unavailable, UsageError
from . import hostkeys, ssh, tailscale


@dataclass
class Enrolment:
    """What `enroll` did."""

    entry: str
    source: str  # "tailnet" or "confirmed"
    keys: list[hostkeys.HostKey] = field(default_factory=list)
    replaced: list[hostkeys.HostKey] = field(default_factory=list)
    login: str = ""  # "ok" or why login failed


def enroll(settings: Any, yes: bool, confirm: Callable[[str], bool] | None, say: Callable[[str], None] = print) -> Enrolment:
    """Pin the host key of `[l4] host`; `confirm(question)` asks the user when the tailnet vouches for no key."""
    l4 = ssh.settings_l4(settings)
    host = str(ssh.require(l4, "host"))
    port = int(l4.get("port") or 22)
    peer = tailscale.find_peer(host)
    entry = hostkeys.host_entry(peer.ip, port)
    name = peer.dns_name or host
    before = hostkeys.read_pins(entry)
    presented = ssh.scan_host_key(peer.ip, port)
    if peer.ssh_host_keys:
        keys = [hostkeys.HostKey.parse(k) for k in peer.ssh_host_keys]
        if presented.line() not in {k.line() for k in keys}:
            raise Refused(
                f"{name} ({entry}) presents {presented.fingerprint()}, which is not among the host keys the tailnet advertises for it; nothing pinned",
                fix="something else answers at that address, or the host's keys changed without tailscale knowing: check the host",
            )
        source = "tailnet"
        say(f"posture: {name} ({entry}): the tailnet vouches for {len(keys)} host key(s); the host presents {presented.keytype} {presented.fingerprint()}")
    else:
        say(f"posture: {name} ({entry}) presents the host key {presented.keytype} {presented.fingerprint()}")
        say("posture: the tailnet advertises no host key for it: compare this fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host")
        if before and presented.line() not in {k.line() for k in before}:
            say(f"posture: WARNING: this replaces the pinned key {', '.join(k.fingerprint() for k in before)}")
        if not yes:
            if confirm is None:
                raise UsageError("the host key fingerprint must be confirmed", fix="run `posture l4 enroll` on a terminal, or pass --yes after checking the fingerprint")
            if not confirm("Pin this host key?"):
                raise Refused("host key not confirmed; nothing pinned", fix="check the fingerprint on the host, then run `posture l4 enroll` again")
        keys = [presented]
        source = "confirmed"
    path = hostkeys.pin(entry, keys)
    replaced = [k for k in before if k.line() not in {n.line() for n in keys}]
    say(f"posture: pinned {len(keys)} host key(s) for {entry} in {path}")
    result = Enrolment(entry=entry, source=source, keys=keys, replaced=replaced)
    try:
        target = ssh.target_for(l4, peer.ip, name)
        client = ssh.connect(target)
        client.close()
        result.login = "ok"
        say(f"posture: SSH login as {target.user} works")
    except (Unavailable, UsageError, Refused) as exc:
        result.login = exc.line()
        say(f"posture: SSH login does not work yet: {exc.line()}")
    return result
