"""Fetching a credential from where the user's config says it is (`[credentials.NAME]`, checked by
posture.config.credentials): a file, a variable of the user's own environment, or a command run
here, outside the boundary, with the user's environment and a timeout; its stdout, stripped, is the
value. Errors name the config key and the fix, never the value (nor a command's arguments, which
might hold one: only the program's name is ever shown).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Unavailable

COMMAND_TIMEOUT = 10  # seconds a source command may take, unless its entry says `timeout`


class SourceError(Unavailable):
    """A configured credential could not be fetched (exit 69: the session refuses to start)."""


@dataclass(frozen=True)
class Source:
    """One `[credentials.NAME]` entry of the user's config."""

    name: str
    kind: str  # file, env or command
    file: str = ""
    env: str = ""
    command: list[str] = field(default_factory=list)
    timeout: int = COMMAND_TIMEOUT
    inside_env: str = ""
    inside_file: str = ""
    hosts: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The config key that names the source, e.g. credentials.anthropic.command."""
        return f"credentials.{self.name}.{self.kind}"

    def describe(self) -> str:
        """Where the value comes from, for explain, doctor and the audit log (never the value)."""
        how = {"file": f"file {self.file}", "env": f"${self.env} of your environment",
               "command": f"command {self.command[0] if self.command else '?'}"}[self.kind]
        return f"[credentials.{self.name}] {how}"

    def stands_for(self) -> str:
        """The credential's name as the broker knows it ($VAR or ~/path)."""
        return f"${self.inside_env}" if self.inside_env else f"~/{self.inside_file}"

    def applies(self, profile: Any) -> bool:
        """Whether a session of `profile` gets it: the profiles it lists, else every profile naming it."""
        if self.profiles:
            return profile.name in self.profiles
        return self.inside_env in profile.credential_env if self.inside_env else self.inside_file in profile.credential_files


def from_config(table: dict[str, dict[str, Any]]) -> list[Source]:
    """The user's `[credentials]` tables (already checked) as Sources."""
    out = []
    for name, entry in sorted(table.items()):
        kind = next(k for k in ("file", "env", "command") if k in entry)
        out.append(Source(name=name, kind=kind, file=entry.get("file", ""), env=entry.get("env", ""),
                          command=list(entry.get("command", [])), timeout=int(entry.get("timeout", COMMAND_TIMEOUT)),
                          inside_env=entry.get("inside_env", ""), inside_file=entry.get("inside_file", ""),
                          hosts=list(entry.get("hosts", [])), profiles=list(entry.get("profiles", []))))
    return out


def for_profile(table: dict[str, dict[str, Any]], profile: Any) -> list[Source]:
    """The user's sources that a session of `profile` gets."""
    return [s for s in from_config(table) if s.applies(profile)]


def fetch(src: Source, host_env: dict[str, str]) -> str:
    """The credential's value (stripped of surrounding whitespace); SourceError when there is none."""
    if src.kind == "file":
        try:
            value = Path(src.file).read_text()
        except FileNotFoundError:
            raise SourceError(f"{src.key}: {src.file} does not exist", fix=f"create it, or change {src.key} in your posture config") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{src.key}: cannot read {src.file}: {getattr(exc, 'strerror', None) or 'not text'}",
                              fix=f"make it readable by you, or change {src.key} in your posture config") from None
    elif src.kind == "env":
        value = host_env.get(src.env, "")
        if not value.strip():
            raise SourceError(f"{src.key}: ${src.env} is not set in your environment", fix=f"export {src.env} before running posture, or change {src.key}")
    else:
        value = _run(src, host_env)
    value = value.strip()
    if not value:
        raise SourceError(f"{src.key}: {src.describe()} gave an empty value", fix=f"check it outside posture, or change {src.key}")
    return value


def _run(src: Source, host_env: dict[str, str]) -> str:
    prog = src.command[0]
    try:
        proc = subprocess.run(src.command, env=dict(host_env), stdin=subprocess.DEVNULL, capture_output=True, timeout=src.timeout)
    except FileNotFoundError:
        raise SourceError(f"{src.key}: {prog}: command not found", fix=f"install {prog} or give its full path in {src.key}") from None
    except PermissionError:
        raise SourceError(f"{src.key}: {prog}: permission denied", fix=f"make {prog} executable, or change {src.key}") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{src.key}: {prog} did not answer within {src.timeout} s",
                          fix=f"unlock it outside posture first (a password manager may be waiting for you), or raise credentials.{src.name}.timeout") from None
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise SourceError(f"{src.key}: {prog} exited with {proc.returncode}{_said(proc.stderr, out)}",
                          fix=f"run the command yourself to see why, or change {src.key} in your posture config")
    return out


def _said(stderr: bytes, stdout: str) -> str:
    """The command's last line of stderr (its reason), unless it might hold the value."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1][:200]
    secret = stdout.strip()
    if secret and (secret in last or last in secret):
        return ""
    return f" ({last})"
