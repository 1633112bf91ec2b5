"""MCP server definitions found for a project, their fingerprints, and the user's approvals.

A fingerprint covers what decides what a server runs or reaches: command, args, url,
and the *names* of its env vars and headers (never their values). Approving stores it;
any change makes the server unfamiliar again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import gitutil, paths
from ..jsonstore import JsonStore

PROJECT_FILES = (".mcp.json", ".cursor/mcp.json", ".vscode/mcp.json")
USER_SCOPE = "*"  # approvals of servers from the user's own agent configs hold for every project


@dataclass(frozen=True)
class McpServer:
    """One MCP server definition and where it was found."""

    name: str
    source: str  # e.g. ".mcp.json", "~/.claude.json", "~/.claude.json (project)", "~/.codex/config.toml"
    user_level: bool
    command: str | None = None
    args: tuple[str, ...] = ()
    url: str | None = None
    env_names: tuple[str, ...] = ()
    header_names: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Identity of this definition: name and where it was found."""
        return f"{self.name}@{self.source}"

    @property
    def fingerprint(self) -> str:
        """SHA-256 over command, args, url and env/header names."""
        body = {
            "command": self.command,
            "args": list(self.args),
            "url": self.url,
            "env": sorted(self.env_names),
            "headers": sorted(self.header_names),
        }
        from ..digest import sha256

        return sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Discovery:
    """Every server found, and every config that could not be read (which counts against trust)."""

    servers: list[McpServer] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _names(value: Any) -> tuple[str, ...]:
    return tuple(sorted(str(k) for k in value)) if isinstance(value, dict) else ()


def _server(name: str, spec: Any, source: str, user_level: bool) -> McpServer:
    if not isinstance(spec, dict):
        spec = {"command": repr(spec)}
    args = spec.get("args") or ()
    return McpServer(
        name=str(name),
        source=source,
        user_level=user_level,
        command=str(spec["command"]) if spec.get("command") is not None else None,
        args=tuple(str(a) for a in args) if isinstance(args, list) else (repr(args),),
        url=str(spec["url"]) if spec.get("url") is not None else None,
        env_names=_names(spec.get("env")),
        header_names=_names(spec.get("headers")),
    )


def _servers_in(doc: Any, source: str, user_level: bool) -> list[McpServer]:
    found = []
    if isinstance(doc, dict):
        for key in ("mcpServers", "servers"):
            table = doc.get(key)
            if isinstance(table, dict):
                found += [_server(n, s, source, user_level) for n, s in table.items()]
    return found


def discover(project: Path, home: Path | None = None) -> Discovery:
    """Find every MCP server the agent would load in `project`."""
    home = home or paths.home_dir()
    result = Discovery()
    for rel in PROJECT_FILES:
        path = project / rel
        if path.is_file():
            try:
                result.servers += _servers_in(json.loads(path.read_text()), rel, False)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                result.unreadable.append(f"{rel}: {exc.__class__.__name__}")
    claude = home / ".claude.json"
    if claude.is_file():
        try:
            doc = json.loads(claude.read_text())
            result.servers += _servers_in(doc, "~/.claude.json", True)
            projects = doc.get("projects") if isinstance(doc, dict) else None
            if isinstance(projects, dict):
                entry = projects.get(str(project))
                result.servers += _servers_in(entry, "~/.claude.json (project)", False)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            result.unreadable.append(f"~/.claude.json: {exc.__class__.__name__}")
    codex = home / ".codex" / "config.toml"
    if codex.is_file():
        try:
            import tomllib

            doc = tomllib.loads(codex.read_text())
            table = doc.get("mcp_servers")
            if isinstance(table, dict):
                result.servers += [_server(n, s, "~/.codex/config.toml", True) for n, s in table.items()]
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            result.unreadable.append(f"~/.codex/config.toml: {exc.__class__.__name__}")
    return result


def _store() -> JsonStore:
    return JsonStore("mcp-approvals.json")


def _scope(project: Path, server: McpServer) -> str:
    return USER_SCOPE if server.user_level else gitutil.project_key(project)


def approved_fingerprint(project: Path, server: McpServer) -> str | None:
    """The fingerprint the user approved for this server, if any."""
    return _store().read().get(_scope(project, server), {}).get(server.key, {}).get("fingerprint")


def approve(project: Path, servers: list[McpServer]) -> None:
    """Record the current fingerprints of `servers` as approved."""

    def change(doc: dict[str, Any]) -> None:
        for server in servers:
            doc.setdefault(_scope(project, server), {})[server.key] = {
                "fingerprint": server.fingerprint,
                "project": str(project),
                "command": server.command,
                "url": server.url,
            }

    _store().change(change)


def revoke(project: Path, servers: list[McpServer]) -> int:
    """Forget approvals of `servers`; return how many were removed."""

    def change(doc: dict[str, Any]) -> int:
        removed = 0
        for server in servers:
            if doc.get(_scope(project, server), {}).pop(server.key, None) is not None:
                removed += 1
        return removed

    return _store().change(change)


def status(project: Path, server: McpServer) -> str:
    """'approved', 'changed' (approved once, different now) or 'unapproved'."""
    known = approved_fingerprint(project, server)
    if known is None:
        return "unapproved"
    return "approved" if known == server.fingerprint else "changed"
