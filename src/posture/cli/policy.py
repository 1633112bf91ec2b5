"""Commands on policy: explain, trust, mcp list/approve/revoke."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import UsageError
from .app import PathArg, app, emit_json, err, mcp_app, out, request


def _render_toolchains(tools: dict[str, Any]) -> None:
    out(f"PATH inside: {':'.join(tools['path']) or '(the system PATH)'}")
    for t in tools["entered"]:
        via = f"{t['entry']}" + (f" -> {t['exe']}" if t["exe"] else "")
        out(f"  toolchain in (read-only): {t['path']}: {t['why']} (via {via})")
    for x in tools["left_out"]:
        via = f" (via {x['entry']}" + (f" -> {x['exe']}" if x["exe"] else "") + ")" if x["entry"] and x["entry"] != x["path"] else ""
        out(f"  toolchain OUT: {x['path']}: {x['why']}{via}")
    for m in tools["masked"]:
        out(f"  credential masked: {m}")
    out("  (add a directory with [mounts] ro, keep one out with [mounts] drop; a repo file may only drop)")


def _render_decision(d, env_report: dict[str, Any] | None, tools: dict[str, Any] | None = None, live: dict[str, Any] | None = None) -> None:
    out(f"project: {d.project}")
    out(f"floor:   {d.floor} ({d.floor_from})")
    if d.ratchet:
        out(f"ratchet: {d.ratchet['level']} since {d.ratchet['since']} (session {d.ratchet.get('session')}); `posture trust` clears it")
    out("rules:")
    for r in d.rules:
        mark = "FIRED" if r.fired else "  -  "
        out(f"  [{mark}] {r.rule} -> {r.level}: {r.evidence}")
    if d.repo_file:
        out(f"repo config: {d.repo_file}")
        for item in d.repo_asked:
            out(f"  applied: {item}")
        for key, why in d.repo_ignored:
            out(f"  IGNORED: {key}: {why}")
    if env_report is not None:
        passed = ", ".join(f"{k}={v}" for k, v in env_report["passed"].items()) or "(none)"
        out(f"env passed: {passed}")
        for name, why in env_report["refused"].items():
            out(f"  env refused: {name}: {why}")
    if tools is not None:
        _render_toolchains(tools)
    out(f"level:   {d.why()}")
    if live is not None:
        calls = live["tool_calls"]
        seen = f"tool calls via {calls['how']} at {', '.join(calls['levels'])}" if calls["hook"] else "no tool calls (this agent has no hook)"
        out(f"live triggers: on_trigger = {live['on_trigger']}; {seen}; watched: {', '.join(live['watched'])}")
        out(f"  not seen: {live['not_seen']}")
    state = "available" if d.backend_available else f"UNAVAILABLE: {d.backend_reason}" + (f" (fix: {d.backend_fix})" if d.backend_fix else "")
    out(f"backend: {d.backend or 'none'} ({state})")


def _render_network(net: dict[str, Any]) -> None:
    out(f"network: {net['mode']} (chosen by {net['chosen_by']})")
    if net["mode"] == "allowlist":
        out(f"  allow: {', '.join(net['allow']) or '(nothing listed)'}")
    if net["mode"] != "public":
        out(f"  api hosts (through the gateway): {', '.join(net['api_hosts']) or '(none)'}")
        out("  no direct connection and no DNS leaves the session; everything goes through the gateway's proxy")
    for item in net["repo_asked"]:
        out(f"  repo applied: {item}")
    for item in net["repo_ignored"]:
        out(f"  repo IGNORED: {item['key']}: {item['why']}")
    if net["note"]:
        out(f"  NOTE: {net['note']}")


@app.command()
def explain(
    path: Optional[Path] = PathArg,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (documented in the README)."),
    intent: Optional[str] = typer.Option(None, "--intent", help="Declare what the task will do: push."),
    untrusted_input: bool = typer.Option(False, "--untrusted-input", help="The task reads content from strangers."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Agent profile whose environment to show."),
    network: Optional[str] = typer.Option(None, "--network", help="The network mode you would pass to up/exec."),
) -> int:
    """Show the level posture would pick, every rule's evidence, and what the repo file asked for, without starting anything."""
    from .. import envpolicy, gitutil, netpolicy, profiles, runner, view
    from ..plugins import load_settings
    from ..policy.decide import decide

    req = request(path, "auto", profile, intent, untrusted_input)
    project = gitutil.resolve_project(req.path)
    settings = load_settings(project)
    prof = profiles.load(profile or settings.profile)
    d = decide(project, settings, intent_push=req.intent_push, untrusted_input=req.untrusted_input)
    env = envpolicy.build_env(dict(os.environ), [*prof.env_pass, *prof.env_secrets, *settings.env_pass], settings.env_drop, {})
    env_report = {"profile": prof.name, "passed": env.masked(), "refused": env.refused}
    net = netpolicy.report(settings, runner.parse_network(network), view.api_hosts(prof), d.level)
    from .. import paths
    from ..gateway import broker
    from ..triggers import arm

    live = arm.explain(prof, settings.on_trigger, settings.trusted_hosts)
    creds = broker.survey(prof, dict(os.environ), paths.home_dir(), user=settings.credentials)  # commands named, not run
    tools = _toolchains(settings)
    if as_json:
        emit_json({**d.to_json(), "env": env_report, "toolchains": tools, "triggers": live, "credentials": creds, "network": net})
    else:
        _render_decision(d, env_report, tools, live)
        out(f"credentials: {broker.describe(creds)}")
        _render_network(net)
    return 0


def _toolchains(settings) -> dict[str, Any]:
    """What of the user's PATH a local view (L2, L3) shows: the trees, links, masks, and what stays out."""
    from .. import paths, toolchains
    from ..view import ETC_RO, SYSTEM_RO

    system = [p for p in (*SYSTEM_RO, *ETC_RO) if os.path.lexists(p)]
    return toolchains.for_settings(settings, dict(os.environ), str(paths.home_dir()), system).to_json()


@app.command()
def trust(
    path: Optional[Path] = PathArg,
    revoke: bool = typer.Option(False, "--revoke", help="Withdraw trust instead."),
) -> int:
    """Trust a project (the untrusted_repo rule stops firing) and clear its ratchet."""
    from .. import audit, gitutil
    from ..policy import trust as trust_store

    project = gitutil.resolve_project(path)
    if revoke:
        had = trust_store.untrust(project)
        audit.record("trust.revoke", project=str(project), had=had)
        err(f"posture: {project} is no longer trusted" if had else f"posture: {project} was not trusted")
        return 0
    ratchet = trust_store.ratchet(project)
    trust_store.trust(project)
    audit.record("trust", project=str(project), cleared_ratchet=ratchet)
    err(f"posture: trusted {project}" + (f"; ratchet at {ratchet['level']} cleared" if ratchet else ""))
    return 0


def _servers(path: Optional[Path]):
    from .. import gitutil
    from ..policy import mcp

    project = gitutil.resolve_project(path)
    return project, mcp.discover(project)


@mcp_app.command("list")
def mcp_list(path: Optional[Path] = PathArg, as_json: bool = typer.Option(False, "--json")) -> int:
    """Every MCP server the agent would load here, and whether it is approved."""
    from ..policy import mcp

    project, found = _servers(path)
    rows = [
        {
            "name": s.name,
            "source": s.source,
            "status": mcp.status(project, s),
            "command": s.command,
            "args": list(s.args),
            "url": s.url,
            "env": list(s.env_names),
            "fingerprint": s.fingerprint,
        }
        for s in found.servers
    ]
    if as_json:
        emit_json({"project": str(project), "servers": rows, "unreadable": found.unreadable})
        return 0
    if not rows and not found.unreadable:
        out("no MCP servers")
    for row in rows:
        target = row["url"] or " ".join([row["command"] or "?", *row["args"]])
        env = f" env: {', '.join(row['env'])}" if row["env"] else ""
        out(f"{row['status']:10} {row['name']} ({row['source']}): {target}{env}")
    for item in found.unreadable:
        out(f"unreadable {item}")
    return 0


@mcp_app.command("approve")
def mcp_approve(
    args: list[str] = typer.Argument(None, help="[PATH] NAME...: the servers to approve."),
    all_: bool = typer.Option(False, "--all", help="Approve every server found."),
) -> int:
    """Approve MCP servers as they are now (a later change makes them unfamiliar again)."""
    from .. import audit
    from ..policy import mcp

    path, names = _split_path_names(args or [])
    project, found = _servers(path)
    if all_:
        chosen = found.servers
    else:
        if not names:
            raise UsageError("name the servers to approve", fix="`posture mcp approve NAME...` or `--all`; `posture mcp list` shows them")
        chosen = _pick(found.servers, names)
    mcp.approve(project, chosen)
    for s in chosen:
        audit.record("mcp.approve", project=str(project), server=s.key, fingerprint=s.fingerprint, command=s.command, args=list(s.args), url=s.url, env=list(s.env_names))
        err(f"posture: approved {s.key}")
    return 0


@mcp_app.command("revoke")
def mcp_revoke(args: list[str] = typer.Argument(..., help="[PATH] NAME...: the servers to revoke.")) -> int:
    """Withdraw approval of MCP servers."""
    from .. import audit
    from ..policy import mcp

    path, names = _split_path_names(args)
    project, found = _servers(path)
    chosen = _pick(found.servers, names)
    removed = mcp.revoke(project, chosen)
    audit.record("mcp.revoke", project=str(project), servers=[s.key for s in chosen])
    err(f"posture: revoked {removed} approval(s)")
    return 0


def _split_path_names(args: list[str]) -> tuple[Optional[Path], list[str]]:
    if args and (os.sep in args[0] or args[0] in (".", "..")) and Path(args[0]).is_dir():
        return Path(args[0]), args[1:]
    return None, args


def _pick(servers, names: list[str]):
    chosen = [s for s in servers if s.name in names or s.key in names]
    missing = [n for n in names if not any(s.name == n or s.key == n for s in servers)]
    if missing:
        raise UsageError(f"no MCP server named {', '.join(missing)} here", fix="`posture mcp list` shows the servers found")
    return chosen
