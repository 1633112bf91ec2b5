"""posture's own known_hosts for L4: the only file host keys are checked against.

It lives in posture's state dir (never ~/.ssh/known_hosts) and is written only by
`posture l4 enroll`. Lines use OpenSSH's format, so paramiko and ssh(1) read the same file.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import UsageError


def known_hosts_file() -> Path:
    """Path of posture's known_hosts for L4 hosts."""
    return paths.ensure_private_dir(paths.state_dir() / "l4") / "known_hosts"


def host_entry(ip: str, port: int) -> str:
    """The known_hosts name of `ip`:`port` ("[ip]:port" unless the port is 22)."""
    return ip if port == 22 else f"[{ip}]:{port}"


@dataclass(frozen=True)
class HostKey:
    """One public host key: its type and base64 blob."""

    keytype: str
    blob: str

    @classmethod
    def parse(cls, text: str) -> "HostKey":
        """Parse "ssh-ed25519 AAAA... [comment]"; a usage error when it is not a public key."""
        parts = text.split()
        if len(parts) < 2:
            raise UsageError(f"not an SSH public key: {text[:60]!r}", fix="check the peer's sshHostKeys")
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except ValueError:
            raise UsageError(f"not an SSH public key: {text[:60]!r}", fix="check the peer's sshHostKeys") from None
        # The blob starts with its own type name; a mismatch means a garbled key.
        n = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
        if raw[4 : 4 + n].decode(errors="replace") != parts[0]:
            raise UsageError(f"SSH public key type {parts[0]} does not match its data", fix="check the peer's sshHostKeys")
        return cls(parts[0], parts[1])

    def fingerprint(self) -> str:
        """OpenSSH's SHA256 fingerprint ("SHA256:...")."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def line(self) -> str:
        """"type blob" as written after the host name."""
        return f"{self.keytype} {self.blob}"


def read_pins(entry: str, path: Path | None = None) -> list[HostKey]:
    """The keys pinned for `entry` (a name from `host_entry`)."""
    path = path or known_hosts_file()
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#") and entry in parts[0].split(","):
            found.append(HostKey(parts[1], parts[2]))
    return found


def pin(entry: str, keys: list[HostKey], path: Path | None = None) -> Path:
    """Replace the keys pinned for `entry` with `keys`; return the file."""
    path = path or known_hosts_file()
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and entry in parts[0].split(","):
                continue
            kept.append(line)
    kept += [f"{entry} {k.line()}" for k in keys]
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)
    return path
