"""What a profile's credentials become for one session: sentinels inside, a plan for the gateway.

The profile names its credentials (`[credentials]`: `env` variables, `files` in the home, the
`hosts` they are for, the agent's `base_url` variable and its default `upstream`). Each one
found on this host gets a sentinel of the same shape; one that is absent stays absent (no
sentinel for nothing). The agent's base-URL variable inside always points at the gateway; a
value the user set outside becomes the upstream (and its host one of the credential's hosts).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import INSIDE_PORT, sentinel

# Outside posture, where the OAuth token is refreshed instead of the agent's own default
# (an organisation's identity proxy; the tests' stand-in).
TOKEN_URL_ENV = "POSTURE_OAUTH_TOKEN_URL"
DOOR_LEVELS = frozenset({"l2", "l3", "l4"})  # the levels whose sessions can reach their gateway


@dataclass
class Swap:
    """One sentinel and what the gateway puts in its place (never shown: repr hides `real`)."""

    name: str
    sentinel: str
    real: str = field(repr=False)
    hosts: list[str] = field(default_factory=list)
    oauth: dict[str, Any] | None = field(default=None, repr=False)  # refreshable: file, json path, format


@dataclass
class Brokered:
    """The session's side of the gateway: env and files for inside, the plan for the process."""

    env: dict[str, str] = field(default_factory=dict)  # name -> sentinel (and the base URL)
    files: dict[str, str] = field(default_factory=dict)  # home-relative path -> sentinel file content
    swaps: list[Swap] = field(default_factory=list)
    upstream: str = ""
    base_url_env: str = ""
    base_path: str = ""  # the upstream URL's path, kept after the gateway's address inside
    missing: list[str] = field(default_factory=list)  # declared, not found on this host
    paths: dict[str, str] = field(default_factory=dict)  # home-relative path -> host file holding its sentinel

    @property
    def active(self) -> bool:
        """True when there is something to broker (else no gateway runs)."""
        return bool(self.swaps)

    def inside_url(self, port: int = INSIDE_PORT) -> str:
        """The agent's base URL inside, through the door listening on 127.0.0.1:`port`."""
        return f"http://127.0.0.1:{port}{self.base_path}"

    def given_names(self) -> list[str]:
        """The names of what would be given (for a level that cannot take them)."""
        return [s.name for s in self.swaps]

    def given(self) -> list[dict[str, Any]]:
        """Names and hosts of what the session was given, for the audit log (never values)."""
        return [{"name": s.name, "hosts": list(s.hosts), "refresh": bool(s.oauth)} for s in self.swaps]

    def plan(self) -> dict[str, Any]:
        """What the gateway process needs (real values included: it goes down a pipe, never to disk)."""
        return {"upstream": self.upstream, "swaps": [
            {"name": s.name, "sentinel": s.sentinel, "real": s.real, "hosts": s.hosts, "oauth": s.oauth} for s in self.swaps]}


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def substitute(profile: Any, host_env: dict[str, str], home: Path, port: int = INSIDE_PORT) -> Brokered:
    """Find the profile's credentials here and make the session's sentinels for them."""
    out = Brokered(base_url_env=profile.base_url_env)
    user_base = host_env.get(profile.base_url_env, "") if profile.base_url_env else ""
    out.upstream = (user_base or profile.upstream).rstrip("/")
    out.base_path = urlsplit(out.upstream).path.rstrip("/") if out.upstream else ""
    hosts = sorted({h.lower() for h in profile.credential_hosts} | ({_host(user_base)} if user_base else set()))
    for name in profile.credential_env:
        value = host_env.get(name, "")
        if not value:
            out.missing.append(f"${name}")
            continue
        fake = sentinel.make(value)
        out.env[name] = fake
        out.swaps.append(Swap(f"${name}", fake, value, hosts))
    for rel in profile.credential_files:
        path = home / rel
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            out.missing.append(f"~/{rel}")
            continue
        except (OSError, ValueError):
            out.missing.append(f"~/{rel} (unreadable or not JSON: not brokered, not shown inside)")
            continue
        fake_doc, swapped = sentinel.json_file(doc)
        out.files[rel] = sentinel.dumps(fake_doc)
        for where, fake in swapped.items():
            if "refresh" in where.rsplit(".", 1)[-1].lower():
                continue  # a refresh token is only ever used by the gateway itself, never injected
            real = _at(doc, where)
            oauth = None
            if profile.refresh and where.endswith(".accessToken"):
                parent = where.rsplit(".", 1)[0]
                oauth = {"format": profile.refresh, "file": str(path), "path": parent, "doc": _at(doc, parent),
                         "token_url": host_env.get(TOKEN_URL_ENV, "")}
            out.swaps.append(Swap(f"~/{rel}:{where}", fake, str(real), hosts, oauth))
    if out.swaps and profile.base_url_env:
        out.env[profile.base_url_env] = out.inside_url(port)
    return out


def _at(doc: Any, where: str) -> Any:
    """The value at a path made by sentinel.json_file ("a.b[2].c")."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", where):
        doc = doc[int(part[1:-1])] if part.startswith("[") else doc[part]
    return doc


def survey(profile: Any, host_env: dict[str, str], home: Path) -> dict[str, Any]:
    """What the profile would broker here and what is missing (names and hosts, never values), for
    `posture explain` and `doctor`."""
    b = substitute(profile, host_env, home)
    return {"profile": profile.name, "brokered": [{"name": s.name, "hosts": s.hosts} for s in b.swaps],
            "missing": b.missing, "upstream": b.upstream if b.swaps else None, "base_url": profile.base_url_env or None}


def describe(found: dict[str, Any]) -> str:
    """One line of `survey`'s answer."""
    names = ", ".join(f"{b['name']} ({', '.join(b['hosts'])})" for b in found["brokered"]) or "none found here"
    missing = f"; missing here: {', '.join(found['missing'])}" if found["missing"] else ""
    upstream = f"; upstream {found['upstream']}" if found["upstream"] else ""
    return f"{found['profile']}: brokered by the session's gateway: {names}{missing}{upstream}"


def prepare(profile: Any, host_env: dict[str, str], home: Path, session: str, level: str) -> Brokered:
    """`substitute`, with the sentinel files written into the session's runtime dir (`paths`). At a
    level without a door to the gateway (none of the built-in ones), nothing is brokered: the credentials stay absent."""
    if level not in DOOR_LEVELS:
        out = Brokered(base_url_env=profile.base_url_env)
        out.missing = [f"{name} (no gateway door at {level} yet: not shown inside)" for name in substitute(profile, host_env, home).given_names()]
        return out
    brokered = substitute(profile, host_env, home)
    if brokered.files:
        from ..session import session_runtime_dir

        brokered.paths = write_files(brokered, session_runtime_dir(session))
    return brokered


def write_files(brokered: Brokered, runtime: Path) -> dict[str, str]:
    """Write the sentinel credential files into `runtime`; return {home-relative path: host file}."""
    out: dict[str, str] = {}
    if not brokered.files:
        return out
    directory = runtime / "sentinels"
    directory.mkdir(mode=0o700, exist_ok=True)
    for i, (rel, content) in enumerate(sorted(brokered.files.items())):
        path = directory / f"{i}-{Path(rel).name}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
        out[rel] = str(path)
    return out
