"""The built-in trigger rules. Each maps to a minimum level; the user's config may remap it.

They register through the `posture` entry point group like any third-party rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlsplit

from ..config import Settings
from ..hookspecs import hookimpl
from . import mcp
from .events import TOOL_CALL, Event
from .facts import Facts
from .pushparse import push_commands
from .remotes import matches


@dataclass
class Finding:
    """A rule's verdict and the evidence behind it."""

    fired: bool
    evidence: str


class Rule:
    """A trigger rule: when it fires, the session runs at least at its level."""

    name = ""
    default_level = "l4"
    summary = ""

    def evaluate(self, facts: Facts, settings: Settings) -> Finding:  # pragma: no cover - interface
        """Judge the facts; say why, whether or not the rule fires."""
        raise NotImplementedError

    def on_event(self, event: Event, project: Path, settings: Settings) -> Finding | None:
        """Judge one event of a running session (a tool call, a change to the project); None when the
        rule has nothing to say about this kind of event. The project watcher re-runs `evaluate`."""
        return None


def trusted_host(host: str, settings: Settings) -> str | None:
    """The `[triggers] trusted_hosts` glob that `host` matches, if any."""
    host = host.lower().rstrip(".")
    return next((g for g in settings.trusted_hosts if fnmatchcase(host, g.lower())), None)


def _mcp_server_of(tool_name: str) -> str | None:
    """`mcp__<server>__<tool>` -> server (Claude Code's names for MCP tools)."""
    if not tool_name.startswith("mcp__"):
        return None
    return tool_name[len("mcp__"):].split("__", 1)[0] or None


class UntrustedRepo(Rule):
    name = "untrusted_repo"
    summary = "code from someone else can carry instructions for the agent"

    def evaluate(self, facts: Facts, settings: Settings) -> Finding:
        if facts.trust:
            return Finding(False, f"trusted with `posture trust` on {facts.trust.get('since', '?')}")
        if not facts.is_git:
            return Finding(True, "not a git repository, so its authors are unknown (run `posture trust` if it is yours)")
        if facts.remotes:
            strangers = [r for r in facts.remotes if not matches(r.normalised, settings.trusted_remotes)]
            if strangers:
                listed = ", ".join(f"{r.name} {r.url} ({r.normalised})" for r in strangers)
                hint = "no trusted_remotes configured" if not settings.trusted_remotes else f"trusted_remotes = {settings.trusted_remotes}"
                return Finding(True, f"remote not in trusted_remotes: {listed}; {hint}")
            listed = ", ".join(f"{r.name} {r.normalised} matches {matches(r.normalised, settings.trusted_remotes)}" for r in facts.remotes)
            return Finding(False, f"every remote is trusted: {listed}")
        if facts.commits == 0:
            return Finding(True, "local repository with no commits: nothing shows who wrote it (run `posture trust` if it is yours)")
        if not settings.identities:
            return Finding(True, f"local-only repository, and no identities configured to recognise the user among its authors: {', '.join(facts.authors[:5])}")
        others = [a for a in facts.authors if a not in settings.identities]
        if others:
            more = f" and {len(others) - 5} more" if len(others) > 5 else ""
            return Finding(True, f"local-only repository with commits by others: {', '.join(others[:5])}{more}")
        if facts.authors_truncated:
            return Finding(True, "local-only repository too large to check every author")
        return Finding(False, f"local-only repository, every author is the user ({', '.join(facts.authors)})")


class UnfamiliarMcp(Rule):
    name = "unfamiliar_mcp"
    summary = "an MCP server the user has not approved (or that changed) runs code and reads data"

    def evaluate(self, facts: Facts, settings: Settings) -> Finding:
        problems = [f"{u} could not be read" for u in facts.mcp.unreadable]
        approved = []
        for server in facts.mcp.servers:
            state = mcp.status(facts.project, server)
            target = server.command or server.url or "?"
            if state == "approved":
                approved.append(server.key)
            elif state == "changed":
                problems.append(f"{server.key} changed since approval ({target})")
            else:
                problems.append(f"{server.key} not approved ({target})")
        if problems:
            return Finding(True, "; ".join(problems) + " (review, then `posture mcp approve`)")
        if approved:
            return Finding(False, f"every MCP server approved: {', '.join(approved)}")
        return Finding(False, "no MCP servers configured")


class PushIntent(Rule):
    name = "push_intent"
    summary = "a task that pushes needs write credentials, which must not sit beside untrusted content"

    def evaluate(self, facts: Facts, settings: Settings) -> Finding:
        if facts.intent_push:
            source = "--intent push" if not settings.intent_push else ".posture.toml [intent] push"
            return Finding(True, f"push intent declared ({source})")
        return Finding(False, "no push intent declared")

    def on_event(self, event: Event, project: Path, settings: Settings) -> Finding | None:
        """A Bash command that would push or publish (a best-effort parse of the command line)."""
        if event.kind != TOOL_CALL or event.tool_name != "Bash":
            return None
        found = push_commands(str(event.tool_input.get("command", "")))
        if found:
            return Finding(True, f"the agent's command would push or publish: {'; '.join(found)}")
        return None


class UntrustedInput(Rule):
    name = "untrusted_input"
    summary = "the task reads content from strangers (issues, web pages, mail)"

    def evaluate(self, facts: Facts, settings: Settings) -> Finding:
        if facts.untrusted_input:
            source = "--untrusted-input" if not settings.intent_untrusted_input else ".posture.toml [intent] untrusted_input"
            return Finding(True, f"untrusted input declared ({source})")
        return Finding(False, "no untrusted input declared")

    def on_event(self, event: Event, project: Path, settings: Settings) -> Finding | None:
        """WebFetch of a host the user has not trusted, any WebSearch outside trusted domains, a tool of
        an MCP server that is not approved."""
        if event.kind != TOOL_CALL:
            return None
        tool, args = event.tool_name, event.tool_input
        if tool == "WebFetch":
            url = str(args.get("url", ""))
            host = (urlsplit(url).hostname or "").lower()
            glob = trusted_host(host, settings) if host else None
            if glob:
                return Finding(False, f"WebFetch of {host}, trusted by [triggers] trusted_hosts {glob!r}")
            return Finding(True, f"WebFetch of {url[:300]} ({host or 'no host'} is not in [triggers] trusted_hosts)")
        if tool == "WebSearch":
            domains = [str(d) for d in args.get("allowed_domains") or []]
            if domains and all(trusted_host(d, settings) for d in domains):
                return Finding(False, f"WebSearch limited to trusted domains {domains}")
            return Finding(True, f"WebSearch for {str(args.get('query', ''))[:200]!r}: results come from hosts not in [triggers] trusted_hosts")
        server = _mcp_server_of(tool)
        if server is not None:
            found = [s for s in mcp.discover(project).servers if s.name == server]
            states = {mcp.status(project, s) for s in found}
            if found and states == {"approved"}:
                return Finding(False, f"{tool}: MCP server {server} is approved")
            why = "changed since approval" if "changed" in states else "not approved" if found else "not configured where posture looks"
            return Finding(True, f"{tool}: MCP server {server} is {why} (review, then `posture mcp approve {server}`)")
        return None


BUILTIN_RULES = [UntrustedRepo(), UnfamiliarMcp(), PushIntent(), UntrustedInput()]


@hookimpl
def posture_rules() -> list[Rule]:
    """The four built-in rules."""
    return list(BUILTIN_RULES)
