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

from . import INSIDE_PORT, sentinel, sources

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
    source: str = ""  # where the real value came from (a profile default, or the user's [credentials.NAME])


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
    sentinels: dict[str, str] = field(default_factory=dict, repr=False)  # every sentinel made, by name (carried on escalation)
    carried: list[str] = field(default_factory=list)  # names whose sentinel is the escalated-from session's
    deferred: list[dict[str, Any]] = field(default_factory=list)  # source commands explain did not run
    failed: list[str] = field(default_factory=list)  # config keys of the user's sources that gave nothing (survey)

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
        return [{"name": s.name, "hosts": list(s.hosts), "refresh": bool(s.oauth), "source": s.source,
                 **({"carried": True} if s.name in self.carried else {})} for s in self.swaps]

    def plan(self) -> dict[str, Any]:
        """What the gateway process needs (real values included: it goes down a pipe, never to disk)."""
        return {"upstream": self.upstream, "swaps": [
            {"name": s.name, "sentinel": s.sentinel, "real": s.real, "hosts": s.hosts, "oauth": s.oauth} for s in self.swaps]}


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()




def substitute(profile: Any, host_env: dict[str, str], home: Path, port: int = INSIDE_PORT, user: dict[str, Any] | None = None,
               keep: dict[str, str] | None = None, run: bool = True, strict: bool = False) -> Brokered:
    """Find the profile's credentials here (or where the user's `[credentials.NAME]` says) and make
    the session's sentinels for them (`keep`: sentinels to reuse by name, an escalated session's).
    `run`: run source commands (explain does not: it lists them as deferred); `strict`: a configured
    source that fails raises SourceError (a session refuses to start), else it is listed as missing."""
    out = Brokered(base_url_env=profile.base_url_env)
    keep = keep or {}
    user_base = host_env.get(profile.base_url_env, "") if profile.base_url_env else ""
    out.upstream = (user_base or profile.upstream).rstrip("/")
    out.base_path = urlsplit(out.upstream).path.rstrip("/") if out.upstream else ""
    extra = {_host(user_base)} if user_base else set()
    hosts = sorted({h.lower() for h in profile.credential_hosts} | extra)
    srcs = sources.for_profile(user or {}, profile)
    by_env = {s.inside_env: s for s in srcs if s.inside_env}
    by_file = {s.inside_file: s for s in srcs if s.inside_file}

    def hosts_of(src: sources.Source | None) -> list[str]:
        return sorted(set(src.hosts) | extra) if src is not None and src.hosts else hosts

    def fetched(src: sources.Source) -> str | None:
        if not run and src.kind == "command":
            out.deferred.append({"name": src.stands_for(), "hosts": hosts_of(src), "source": f"{src.describe()} (run when a session starts)"})
            return None
        try:
            return sources.fetch(src, host_env)
        except sources.SourceError as exc:
            if strict:
                raise
            out.missing.append(f"{src.stands_for()} ({exc.message})")
            out.failed.append(src.key)
            return None

    for name in dict.fromkeys([*profile.credential_env, *by_env]):
        src = by_env.get(name)
        if src is None:
            value = host_env.get(name, "")
            if not value:
                out.missing.append(f"${name}")
                continue
        else:
            got = fetched(src)
            if got is None:
                continue
            value = got
        fake = keep.get(f"${name}") or sentinel.make(value)
        out.env[name] = out.sentinels[f"${name}"] = fake
        out.swaps.append(Swap(f"${name}", fake, value, hosts_of(src), source=src.describe() if src else f"profile default: ${name} of your environment"))
    for rel in dict.fromkeys([*profile.credential_files, *by_file]):
        _file_credential(out, profile, rel, by_file.get(rel), home, host_env, keep, hosts_of(by_file.get(rel)), fetched, strict)
    if out.swaps and profile.base_url_env:
        out.env[profile.base_url_env] = out.inside_url(port)
    out.carried = [name for name in out.sentinels if name in keep]
    return out


def _file_credential(out: Brokered, profile: Any, rel: str, src: sources.Source | None, home: Path, host_env: dict[str, str],
                     keep: dict[str, str], hosts: list[str], fetched: Any, strict: bool) -> None:
    """One credential file: from the home (the profile's default) or the user's source."""
    path = home / rel if src is None else (Path(src.file) if src.kind == "file" else None)
    if src is None:
        try:
            text = (home / rel).read_text()
        except FileNotFoundError:
            out.missing.append(f"~/{rel}")
            return
        except (OSError, UnicodeDecodeError):
            out.missing.append(f"~/{rel} (unreadable or not JSON: not brokered, not shown inside)")
            return
    else:
        got = fetched(src)
        if got is None:
            return
        text = got
    try:
        doc = json.loads(text)
    except ValueError:
        if src is None:
            out.missing.append(f"~/{rel} (unreadable or not JSON: not brokered, not shown inside)")
            return
        message = f"{src.key}: {src.describe()} did not give a JSON document for ~/{rel}"
        if strict:
            raise sources.SourceError(message, fix=f"check it outside posture, or change {src.key}") from None
        out.missing.append(f"~/{rel} ({message})")
        out.failed.append(src.key)
        return
    prefix = f"~/{rel}:"
    fake_doc, swapped = sentinel.json_file(doc, {k[len(prefix):]: v for k, v in keep.items() if k.startswith(prefix)})
    out.files[rel] = sentinel.dumps(fake_doc)
    for where, fake in swapped.items():
        out.sentinels[f"{prefix}{where}"] = fake
        if "refresh" in where.rsplit(".", 1)[-1].lower():
            continue  # a refresh token is only ever used by the gateway itself, never injected
        real = _at(doc, where)
        oauth = None
        if profile.refresh and where.endswith(".accessToken") and path is not None:
            parent = where.rsplit(".", 1)[0]
            oauth = {"format": profile.refresh, "file": str(path), "path": parent, "doc": _at(doc, parent),
                     "token_url": host_env.get(TOKEN_URL_ENV, "")}
        out.swaps.append(Swap(f"{prefix}{where}", fake, str(real), hosts, oauth, source=src.describe() if src else f"profile default: ~/{rel}"))


def _at(doc: Any, where: str) -> Any:
    """The value at a path made by sentinel.json_file ("a.b[2].c")."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", where):
        doc = doc[int(part[1:-1])] if part.startswith("[") else doc[part]
    return doc


def survey(profile: Any, host_env: dict[str, str], home: Path, user: dict[str, Any] | None = None, run: bool = False) -> dict[str, Any]:
    """What the profile would broker here, where each one comes from, and what is missing (names,
    hosts and sources, never values), for `posture explain` (`run` False: source commands are not
    run, only named) and `doctor` (`run` True: they are, with their timeout)."""
    b = substitute(profile, host_env, home, user=user, run=run)
    brokered = [{"name": s.name, "hosts": s.hosts, "source": s.source} for s in b.swaps] + b.deferred
    return {"profile": profile.name, "brokered": brokered, "missing": b.missing, "failed": b.failed,
            "upstream": b.upstream if brokered else None, "base_url": profile.base_url_env or None}


def describe(found: dict[str, Any]) -> str:
    """One line of `survey`'s answer."""
    names = ", ".join(f"{b['name']} ({', '.join(b['hosts'])}; from {b.get('source') or '?'})" for b in found["brokered"]) or "none found here"
    missing = f"; missing here: {', '.join(found['missing'])}" if found["missing"] else ""
    upstream = f"; upstream {found['upstream']}" if found["upstream"] else ""
    return f"{found['profile']}: brokered by the session's gateway: {names}{missing}{upstream}"


def prepare(profile: Any, host_env: dict[str, str], home: Path, session: str, level: str, user: dict[str, Any] | None = None) -> Brokered:
    """`substitute`, with the sentinel files written into the session's runtime dir (`paths`) and the
    sentinels kept there (0600) for an escalation to carry (`carry.py`); sentinels already kept there
    (an escalated-from session's) are reused. A `[credentials.NAME]` source that fails raises
    SourceError: the session does not start. At a level without a door to the
    gateway (none of the built-in ones), nothing is brokered: the credentials stay absent (and no source command runs)."""
    from ..session import session_runtime_dir
    from . import carry

    if level not in DOOR_LEVELS:
        out = Brokered(base_url_env=profile.base_url_env)
        found = substitute(profile, host_env, home, user=user, run=False)
        names = [*found.given_names(), *(d["name"] for d in found.deferred)]
        out.missing = [f"{name} (no gateway door at {level} yet: not shown inside)" for name in names]
        return out
    runtime = session_runtime_dir(session)
    brokered = substitute(profile, host_env, home, user=user, keep=carry.load(runtime), strict=True)
    if brokered.active:
        carry.save(runtime, brokered.sentinels, brokered.given())
    if brokered.files:
        brokered.paths = write_files(brokered, runtime)
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
