"""MCP server definitions found for a project, their fingerprints, and the user's approvals.

The files, each read as its owner defines it:
- Claude Code: `.mcp.json` (project) and `~/.claude.json` (user, and per project under
  `projects.<path>`): JSON, `mcpServers.NAME = {type: stdio|http|sse, command, args, env, url,
  headers, headersHelper}`.
- Cursor: `.cursor/mcp.json`: JSON, `mcpServers.NAME = {command, args, env, envFile, url, headers}`.
- VS Code: `.vscode/mcp.json`: JSONC (comments, trailing commas), `servers.NAME = {type, command,
  args, env, envFile, cwd, url, headers}` next to `inputs` (prompts for `${input:ID}` values).
- Codex: `~/.codex/config.toml`: TOML, `[mcp_servers.NAME]` with command, args, env, env_vars, cwd,
  url, http_headers, env_http_headers, bearer_token_env_var.
Both `mcpServers` and `servers` are read in every JSON file: a server a tool might load is never
missed. A file that cannot be parsed counts against trust (the rule fires) and is listed as unreadable.

A fingerprint covers what decides what a server runs or reaches: command, args, url, cwd,
transport type, envFile path, headersHelper, and the *names* of its env vars and headers (never
their values). Approving stores it; any change makes the server unfamiliar again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import gitutil, paths
from ..jsonstore import JsonStore
from . import jsonc

# Each project file and whether its owner defines it as JSONC (VS Code does; Claude Code and Cursor: JSON).
PROJECT_FILES = (".mcp.json", ".cursor/mcp.json", ".vscode/mcp.json")
JSONC_FILES = frozenset({".vscode/mcp.json"})
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
    type: str | None = None  # transport as written: stdio, http, sse (None: implied by command/url)
    env_file: str | None = None  # a file of env vars the tool loads for it (Cursor, VS Code)
    cwd: str | None = None
    headers_helper: str | None = None  # a command whose output becomes headers (Claude Code)

    @property
    def key(self) -> str:
        """Identity of this definition: name and where it was found."""
        return f"{self.name}@{self.source}"

    @property
    def fingerprint(self) -> str:
        """SHA-256 over what it runs and reaches. Fields a definition does not set are left out, so
        the fingerprint of a plain command/url server is the one earlier versions approved."""
        body: dict[str, Any] = {
            "command": self.command,
            "args": list(self.args),
            "url": self.url,
            "env": sorted(self.env_names),
            "headers": sorted(self.header_names),
        }
        if self.type is not None and self.type != "stdio":  # stdio is what a command server is anyway
            body["type"] = self.type
        for name, value in (("envFile", self.env_file), ("cwd", self.cwd), ("headersHelper", self.headers_helper)):
            if value is not None:
                body[name] = value
        from ..digest import sha256

        return sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Discovery:
    """Every server found, and every config that could not be read (which counts against trust)."""

    servers: list[McpServer] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _names(*values: Any) -> tuple[str, ...]:
    """Sorted names: the keys of tables, the items of lists, single strings."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, dict):
            found.update(str(k) for k in value)
        elif isinstance(value, list):
            found.update(str(v) for v in value)
        elif isinstance(value, str):
            found.add(value)
    return tuple(sorted(found))


def _text(spec: dict[str, Any], key: str) -> str | None:
    value = spec.get(key)
    return None if value is None else str(value)


def _server(name: str, spec: Any, source: str, user_level: bool) -> McpServer:
    if not isinstance(spec, dict):
        spec = {"command": repr(spec)}
    args = spec.get("args") or ()
    env_http = spec.get("env_http_headers")  # Codex: header name -> env var holding its value
    bearer = spec.get("bearer_token_env_var")  # Codex: env var sent as `Authorization: Bearer`
    return McpServer(
        name=str(name),
        source=source,
        user_level=user_level,
        command=_text(spec, "command"),
        args=tuple(str(a) for a in args) if isinstance(args, list) else (repr(args),),
        url=_text(spec, "url"),
        env_names=_names(spec.get("env"), spec.get("env_vars"), bearer, list(env_http.values()) if isinstance(env_http, dict) else None),
        header_names=_names(spec.get("headers"), spec.get("http_headers"), env_http, "Authorization" if bearer else None),
        type=_text(spec, "type"),
        env_file=_text(spec, "envFile"),
        cwd=_text(spec, "cwd"),
        headers_helper=_text(spec, "headersHelper"),
    )


def _servers_in(doc: Any, source: str, user_level: bool) -> list[McpServer]:
    found = []
    if isinstance(doc, dict):
        for key in ("mcpServers", "servers"):
            table = doc.get(key)
            if isinstance(table, dict):
                found += [_server(n, s, source, user_level) for n, s in table.items()]
    return found


def _read(path: Path, source: str, kind: str, result: Discovery) -> Any:
    """Parse one config file (kind: json, jsonc or toml); on failure note it as unreadable, return None."""
    try:
        text = path.read_text(encoding="utf-8")
        if kind == "toml":
            import tomllib

            return tomllib.loads(text)
        return jsonc.loads(text, comments=kind == "jsonc")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        what = {"json": "JSON", "jsonc": "JSON with comments", "toml": "TOML"}[kind]
        result.unreadable.append(f"{source}: not valid {what} ({jsonc.describe_error(exc)})")
        return None


def discover(project: Path, home: Path | None = None) -> Discovery:
    """Find every MCP server the agent would load in `project`."""
    home = home or paths.home_dir()
    result = Discovery()
    for rel in PROJECT_FILES:
        path = project / rel
        if path.is_file():
            doc = _read(path, rel, "jsonc" if rel in JSONC_FILES else "json", result)
            result.servers += _servers_in(doc, rel, False)
    claude = home / ".claude.json"
    if claude.is_file():
        doc = _read(claude, "~/.claude.json", "json", result)
        result.servers += _servers_in(doc, "~/.claude.json", True)
        projects = doc.get("projects") if isinstance(doc, dict) else None
        if isinstance(projects, dict):
            result.servers += _servers_in(projects.get(str(project)), "~/.claude.json (project)", False)
    codex = home / ".codex" / "config.toml"
    if codex.is_file():
        doc = _read(codex, "~/.codex/config.toml", "toml", result)
        table = doc.get("mcp_servers") if isinstance(doc, dict) else None
        if isinstance(table, dict):
            result.servers += [_server(n, s, "~/.codex/config.toml", True) for n, s in table.items()]
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
