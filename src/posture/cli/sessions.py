"""Commands on sessions: up, exec, attach, status, down, escalate, pull."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import options
from ..errors import UsageError
from .app import PASSTHROUGH, PathArg, app, emit_json, err, option, out, request


@app.command()
def up(
    path: Optional[Path] = PathArg,
    level: str = option(options.LEVEL),
    profile: Optional[str] = option(options.PROFILE),
    intent: Optional[str] = option(options.INTENT),
    untrusted_input: bool = option(options.UNTRUSTED_INPUT),
    network: Optional[str] = option(options.NETWORK),
    detach: bool = typer.Option(False, "--detach", help="Leave the agent running; come back with `posture attach`."),
) -> int:
    """Start the agent in a new session at the decided level and attach to it (-- CMD overrides the profile's command)."""
    from .. import runner

    req = request(path, level, profile, intent, untrusted_input)
    req.network = runner.parse_network(network)
    record, code = runner.up(req, list(PASSTHROUGH) or None, detach)
    if detach:
        out(record.id)
        err(f"posture: session {record.id} running at {record.level} ({record.backend}); `posture attach --session {record.id}` to come back")
    return code


@app.command("exec")
def exec_(
    path: Optional[Path] = PathArg,
    level: str = option(options.LEVEL),
    profile: Optional[str] = option(options.PROFILE),
    intent: Optional[str] = option(options.INTENT),
    untrusted_input: bool = option(options.UNTRUSTED_INPUT),
    network: Optional[str] = option(options.NETWORK),
    session: Optional[str] = option(options.SESSION_EXEC),
) -> int:
    """Run -- CMD non-interactively in a fresh session (or --session ID), stream its output, exit with its code."""
    from .. import runner

    return runner.exec_command(path, level, profile, intent, untrusted_input, session, list(PASSTHROUGH), network=network)


@app.command()
def attach(session: Optional[str] = typer.Option(None, "--session", help="Session id (default: the only running one).")) -> int:
    """Re-attach the terminal to a detached session's agent."""
    from .. import runner

    return runner.attach(session)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output (documented in the README).")) -> int:
    """Every session, its level, backend and state."""
    from .. import runner
    from ..session import SessionStore

    records = [runner.refresh(r) for r in SessionStore().all()]
    if as_json:
        emit_json([r.public() for r in records])
        return 0
    if not records:
        out("no sessions")
        return 0
    for r in records:
        parent = f" parent={r.parent}" if r.parent else ""
        out(f"{r.id}  {r.level}  {r.backend:8} {r.status:9} {r.created}  {r.project}{parent}")
        if r.note:
            out(f"    {r.note}")
    return 0


@app.command()
def down(
    session: Optional[str] = typer.Option(None, "--session", help="Session id (default: the only running one)."),
    all_: bool = typer.Option(False, "--all", help="Stop every running session."),
) -> int:
    """Stop a session (or --all); no process of it survives."""
    from .. import runner

    if all_:
        for record in runner.down_all():
            err(f"posture: stopped {record.id}")
        return 0
    target = session or runner.live_record(None).id
    runner.down(target)
    err(f"posture: stopped {target}")
    return 0


@app.command()
def escalate(
    session: Optional[str] = option(options.SESSION_ESCALATE),
    to: Optional[str] = option(options.TO),
    reason: str = option(options.REASON),
    abort: bool = typer.Option(False, "--abort", help="Roll back an escalation that stopped half-way (thaws the lower session)."),
) -> int:
    """Move a running session up the ladder (never down): checkpoint, freeze, start higher, stop lower."""
    from .. import escalate as esc

    if abort:
        if not session:
            raise UsageError("--abort needs --session", fix="see `posture status` for the session whose escalation stopped")
        record = esc.abort(session)
        err(f"posture: {record.note}")
        return 0
    child = esc.escalate(session, to, reason)
    out(child.id)
    err(esc.moved_line(child))
    return 0


@app.command()
def pull(session: Optional[str] = typer.Option(None, "--session", help="Session id (default: the current project's newest L4 session, running or stopped).")) -> int:
    """Fetch a remote session's work into refs/posture/<session>/... for review (never merged)."""
    from .. import runner

    result = runner.pull(session, None if session else Path.cwd())
    if result.here:
        raise UsageError(f"session {result.session} ran on this machine: its work is already here", fix="`posture pull` is for sessions whose work lives elsewhere (L4)")
    out(result.ref)
    if result.stat:
        out(result.stat.rstrip())
    if not result.new:
        err("posture: nothing new on the host since the last pull")
    err(f"posture: review with `git diff {result.base} {result.ref}`; nothing was merged or checked out")
    return 0
