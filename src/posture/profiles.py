"""Agent profiles: the command to run, its per-project state, credential files and env allowlist."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config, paths
from .config import checks as c
from .config.tomlfile import read_toml
from .errors import ConfigError, UsageError

BUILTIN_DIR = Path(__file__).parent / "profiles"

_SCHEMA: config.Schema = {
    "description": c.string,
    "command": c.list_of(c.string, "strings"),
    "resume": c.list_of(c.string, "strings"),
    "state": {
        "dirs": c.list_of(c.repo_path, "home-relative paths"),
        "files": c.list_of(c.repo_path, "home-relative paths"),
        "project_keyed": c.list_of(c.repo_path, "home-relative paths"),
    },
    "credentials": {
        "files": c.list_of(c.repo_path, "home-relative paths"),
        "env": c.ENV_LIST,
        "hosts": c.STR_LIST,
        "base_url": c.env_name,
        "upstream": c.string,
        "refresh": c.one_of("claude-oauth"),
    },
    "env": {"pass": c.ENV_PATTERNS, "secrets": c.ENV_LIST},
    "protect": {"paths": c.REPO_PATHS},
    "triggers": {"hook": c.one_of("claude-code", "none")},
}


@dataclass
class Profile:
    """One agent's needs: what to run and what of the home it may see."""

    name: str
    description: str
    command: list[str]
    resume: list[str] = field(default_factory=list)  # continues the last conversation (after an escalation)
    state_dirs: list[str] = field(default_factory=list)
    state_files: list[str] = field(default_factory=list)
    # Directories (inside the state) whose entries are named after the agent's working directory,
    # every non-alphanumeric character replaced by '-' (Claude Code's ~/.claude/projects/<key>):
    # where the work tree's path changes (L4), posture maps the key so the history is found.
    state_project_keyed: list[str] = field(default_factory=list)
    # The agent's own credentials: brokered by the session's gateway, never shown inside
    # (posture.gateway). Files in the home, env variables, the hosts they are for, the agent's
    # base-URL variable and its default upstream, and how an OAuth file is refreshed.
    credential_files: list[str] = field(default_factory=list)
    credential_env: list[str] = field(default_factory=list)
    credential_hosts: list[str] = field(default_factory=list)
    base_url_env: str = ""
    upstream: str = ""
    refresh: str = ""
    env_pass: list[str] = field(default_factory=list)
    env_secrets: list[str] = field(default_factory=list)
    protect: list[str] = field(default_factory=list)
    live_hook: str = "none"  # how the agent reports its tool calls to the live triggers: claude-code, or none


def _search_path(name: str) -> Path | None:
    for base in (paths.config_dir() / "profiles", BUILTIN_DIR):
        candidate = base / f"{name}.toml"
        if candidate.is_file():
            return candidate
    return None


def available() -> list[str]:
    """Names of every profile: the user's own and the built-in ones."""
    names = {p.stem for p in BUILTIN_DIR.glob("*.toml")}
    user = paths.config_dir() / "profiles"
    if user.is_dir():
        names |= {p.stem for p in user.glob("*.toml")}
    return sorted(names)


def load(name: str) -> Profile:
    """Load profile `name` (user profiles shadow built-in ones)."""
    path = _search_path(name)
    if path is None:
        raise UsageError(f"no profile named {name!r}", fix=f"use one of: {', '.join(available())}")
    data, text = read_toml(path)
    clean, _ = config.validate(data, _SCHEMA, path, text)
    if not clean.get("command"):
        raise ConfigError(path, None, "command", "missing (expected a list such as [\"claude\"])")
    return _from_dict(name, clean)


def _from_dict(name: str, d: dict[str, Any]) -> Profile:
    return Profile(
        name=name,
        description=d.get("description", name),
        command=list(d["command"]),
        resume=list(d.get("resume") or d["command"]),
        state_dirs=list(d.get("state", {}).get("dirs", [])),
        state_files=list(d.get("state", {}).get("files", [])),
        state_project_keyed=list(d.get("state", {}).get("project_keyed", [])),
        credential_files=list(d.get("credentials", {}).get("files", [])),
        credential_env=list(d.get("credentials", {}).get("env", [])),
        credential_hosts=list(d.get("credentials", {}).get("hosts", [])),
        base_url_env=d.get("credentials", {}).get("base_url", ""),
        upstream=d.get("credentials", {}).get("upstream", ""),
        refresh=d.get("credentials", {}).get("refresh", ""),
        env_pass=list(d.get("env", {}).get("pass", [])),
        env_secrets=list(d.get("env", {}).get("secrets", [])),
        live_hook=d.get("triggers", {}).get("hook", "none"),
        protect=list(d.get("protect", {}).get("paths", [])),
    )
