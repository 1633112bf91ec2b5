"""Commands on sessions: up, exec, attach, status, gc, down, escalate, pull."""

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
    on_trigger: Optional[str] = option(options.ON_TRIGGER),
    detach: bool = typer.Option(False, "--detach", help="Leave the agent running; come back with `posture attach`."),
) -> int:
    """Start the agent in a new session at the decided level and attach to it (-- CMD overrides the profile's command)."""
    from .. import retention, runner

    retention.maybe_prune()
    req = request(path, level, profile, intent, untrusted_input)
    req.network = runner.parse_network(network)
    req.on_trigger = on_trigger
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
    on_trigger: Optional[str] = option(options.ON_TRIGGER),
) -> int:
    """Run -- CMD non-interactively in a fresh session (or --session ID), stream its output, exit with its code."""
    from .. import runner

    return runner.exec_command(path, level, profile, intent, untrusted_input, session, list(PASSTHROUGH), on_trigger, network=network)


@app.command()
def attach(session: Optional[str] = typer.Option(None, "--session", help="Session id (default: the only running one).")) -> int:
    """Re-attach the terminal to a detached session's agent."""
    from .. import runner

    return runner.attach(session)


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (documented in the README)."),
    all_: bool = typer.Option(False, "--all", help="Also sessions that ended more than 24 h ago."),
) -> int:
    """Live sessions and those that ended in the last 24 h (--all: every one kept), their level, backend and state."""
    from .. import retention, runner
    from ..session import SessionStore

    retention.maybe_prune()
    store = SessionStore()
    every = [runner.refresh(r) for r in store.all()]
    records = every if all_ else retention.visible(every, store)
    if as_json:
        emit_json([r.public() for r in records])
        return 0
    if not records:
        out("no sessions")
    for r in records:
        parent = f" parent={r.parent}" if r.parent else ""
        out(f"{r.id}  {r.level}  {r.backend:8} {r.status:9} {r.created}  {r.project}{parent}")
        if r.note:
            out(f"    {r.note}")
    hidden = len(every) - len(records)
    if hidden:
        err(f"posture: {hidden} session{'s' if hidden > 1 else ''} that ended more than 24 h ago not shown (`posture status --all`)")
    return 0


@app.command()
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be removed; remove nothing.")) -> int:
    """Remove ended sessions older than [sessions] retention_days (default 14) with their runtime dirs."""
    import time

    from .. import retention

    verdicts = retention.prune(dry_run=dry_run)
    for v in verdicts:
        r = v.record
        ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.ended))
        if v.prune:
            out(f"{'would remove' if dry_run else 'removed'} {r.id}  {r.level}  {r.backend:8} {r.status:9} ended {ended}  {r.project}")
        else:
            out(f"kept {r.id}: {v.reason}")
    gone = sum(v.prune for v in verdicts)
    err(f"posture: {'would remove' if dry_run else 'removed'} {gone} ended sessions, kept {len(verdicts) - gone} past the retention period")
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
    record = runner.down(target)
    err(f"posture: stopped {target}")
    from ..gateway import egressdoor

    line = egressdoor.summary_from_log(record.data.get("egress_log"), target)
    if line:
        err(line)
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
