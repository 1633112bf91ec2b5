"""The `posture` command line: parses, calls the core, renders, maps errors to exit codes.

Exit codes (sysexits): a command's own code passes through `exec`; 64 usage or config
error; 69 a backend the level needs is unavailable; 70 internal error; 77 refused by policy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from . import __version__
from .errors import EX_SOFTWARE, EX_USAGE, PostureError, UsageError

app = typer.Typer(
    name="posture",
    help="Run a coding agent at the right rung of an isolation ladder (L2 sandbox, L3 microVM, L4 remote host), "
    "and move a running task up that ladder.\n\nExit codes: the command's own (exec); 64 usage or config error; "
    "69 a backend the level needs is unavailable; 70 internal error; 77 refused by policy.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
mcp_app = typer.Typer(help="List, approve and revoke the MCP servers a project would load.", no_args_is_help=True)
audit_app = typer.Typer(help="Show the audit log, or verify its hash chain.", invoke_without_command=True)
app.add_typer(mcp_app, name="mcp")
app.add_typer(audit_app, name="audit")

# typer vendors its own click in recent releases: find its exception classes through typer's public ones.
_CLICK_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# Everything after the first `--` on the command line: the command to run inside.
_PASSTHROUGH: list[str] = []

LEVEL_HELP = "auto (default: decided by the rules, see `posture explain`), l2, l3 or l4."
PathArg = typer.Argument(None, help="Project directory (default: the current one; its git top level is used).", show_default=False)


def _out(text: str = "") -> None:
    print(text)


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _request(path: Optional[Path], level: str, profile: Optional[str], intent: Optional[str], untrusted_input: bool):
    from .runner import Request

    if intent not in (None, "push"):
        raise UsageError(f"--intent {intent!r} is not known", fix="use --intent push")
    return Request(path=path, level=level, profile=profile, intent_push=intent == "push", untrusted_input=untrusted_input)


def _command() -> list[str]:
    if not _PASSTHROUGH:
        raise UsageError("no command given", fix="put the command after --, e.g. `posture exec -- make test`")
    return list(_PASSTHROUGH)


# ---------------------------------------------------------------- sessions

@app.command()
def up(
    path: Optional[Path] = PathArg,
    level: str = typer.Option("auto", "--level", help=LEVEL_HELP),
    profile: Optional[str] = typer.Option(None, "--profile", help="Agent profile: claude-code (default), codex, shell, or your own."),
    intent: Optional[str] = typer.Option(None, "--intent", help="Declare what the task will do: push."),
    untrusted_input: bool = typer.Option(False, "--untrusted-input", help="The task reads content from strangers."),
    detach: bool = typer.Option(False, "--detach", help="Leave the agent running; come back with `posture attach`."),
) -> int:
    """Start the agent in a new session at the decided level and attach to it (-- CMD overrides the profile's command)."""
    from . import runner

    req = _request(path, level, profile, intent, untrusted_input)
    record, code = runner.up(req, list(_PASSTHROUGH) or None, detach)
    if detach:
        _out(record.id)
        _err(f"posture: session {record.id} running at {record.level} ({record.backend}); `posture attach --session {record.id}` to come back")
    return code


@app.command("exec")
def exec_(
    path: Optional[Path] = PathArg,
    level: str = typer.Option("auto", "--level", help=LEVEL_HELP),
    profile: Optional[str] = typer.Option(None, "--profile", help="Agent profile whose view and environment to use."),
    intent: Optional[str] = typer.Option(None, "--intent", help="Declare what the task will do: push."),
    untrusted_input: bool = typer.Option(False, "--untrusted-input", help="The task reads content from strangers."),
    session: Optional[str] = typer.Option(None, "--session", help="Run in this running session instead of a new one."),
) -> int:
    """Run -- CMD non-interactively in a fresh session (or --session ID), stream its output, exit with its code."""
    from . import runner

    return runner.exec_command(path, level, profile, intent, untrusted_input, session, list(_PASSTHROUGH))


@app.command()
def attach(session: Optional[str] = typer.Option(None, "--session", help="Session id (default: the only running one).")) -> int:
    """Re-attach the terminal to a detached session's agent."""
    from . import runner

    return runner.attach(session)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output (documented in the README).")) -> int:
    """Every session, its level, backend and state."""
    from . import runner
    from .session import SessionStore

    records = [runner.refresh(r) for r in SessionStore().all()]
    if as_json:
        _json([r.public() for r in records])
        return 0
    if not records:
        _out("no sessions")
        return 0
    for r in records:
        parent = f" parent={r.parent}" if r.parent else ""
        _out(f"{r.id}  {r.level}  {r.backend:8} {r.status:9} {r.created}  {r.project}{parent}")
        if r.note:
            _out(f"    {r.note}")
    return 0


@app.command()
def down(
    session: Optional[str] = typer.Option(None, "--session", help="Session id (default: the only running one)."),
    all_: bool = typer.Option(False, "--all", help="Stop every running session."),
) -> int:
    """Stop a session (or --all); no process of it survives."""
    from . import runner

    if all_:
        for record in runner.down_all():
            _err(f"posture: stopped {record.id}")
        return 0
    record = runner.live_record(session) if not session else None
    target = session or (record.id if record else "")
    runner.down(target)
    _err(f"posture: stopped {target}")
    return 0


@app.command()
def escalate(
    session: Optional[str] = typer.Option(None, "--session", help="Session id (default: the only running one)."),
    to: Optional[str] = typer.Option(None, "--to", help="l3 or l4 (default: what the rules now give, at least one rung up)."),
    reason: str = typer.Option("", "--reason", help="Why, for the audit log."),
    abort: bool = typer.Option(False, "--abort", help="Roll back an escalation that stopped half-way (thaws the lower session)."),
) -> int:
    """Move a running session up the ladder (never down): checkpoint, freeze, start higher, stop lower."""
    from . import escalate as esc

    if abort:
        if not session:
            raise UsageError("--abort needs --session", fix="see `posture status` for the session whose escalation stopped")
        record = esc.abort(session)
        _err(f"posture: {record.note}")
        return 0
    from .entry import run_escalate

    return run_escalate({"session": session, "to": to, "reason": reason})


@app.command()
def pull(session: Optional[str] = typer.Option(None, "--session", help="Session id (default: the current project's newest L4 session, running or stopped).")) -> int:
    """Fetch a remote session's work into refs/posture/<session>/... for review (never merged)."""
    from .backends import tailnet

    result = tailnet.pull_session(session, None if session else Path.cwd())
    _out(result.ref)
    if result.stat:
        _out(result.stat.rstrip())
    if not result.new:
        _err("posture: nothing new on the host since the last pull")
    _err(f"posture: review with `git diff {result.base} {result.ref}`; nothing was merged or checked out")
    return 0


@app.command("_keeper", hidden=True)
def keeper(session_id: str, ready_fd: Optional[int] = typer.Option(None, "--ready-fd")) -> int:
    """Internal: hold a detached session open."""
    from . import runner

    return runner.keeper_main(session_id, ready_fd)


# ---------------------------------------------------------------- policy

def _render_decision(d, env_report: dict[str, Any] | None) -> None:
    _out(f"project: {d.project}")
    _out(f"floor:   {d.floor} ({d.floor_from})")
    if d.ratchet:
        _out(f"ratchet: {d.ratchet['level']} since {d.ratchet['since']} (session {d.ratchet.get('session')}); `posture trust` clears it")
    _out("rules:")
    for r in d.rules:
        mark = "FIRED" if r.fired else "  -  "
        _out(f"  [{mark}] {r.rule} -> {r.level}: {r.evidence}")
    if d.repo_file:
        _out(f"repo config: {d.repo_file}")
        for item in d.repo_asked:
            _out(f"  applied: {item}")
        for key, why in d.repo_ignored:
            _out(f"  IGNORED: {key}: {why}")
    if env_report is not None:
        passed = ", ".join(f"{k}={v}" for k, v in env_report["passed"].items()) or "(none)"
        _out(f"env passed: {passed}")
        for name, why in env_report["refused"].items():
            _out(f"  env refused: {name}: {why}")
    _out(f"level:   {d.why()}")
    state = "available" if d.backend_available else f"UNAVAILABLE: {d.backend_reason}" + (f" (fix: {d.backend_fix})" if d.backend_fix else "")
    _out(f"backend: {d.backend or 'none'} ({state})")


@app.command()
def explain(
    path: Optional[Path] = PathArg,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (documented in the README)."),
    intent: Optional[str] = typer.Option(None, "--intent", help="Declare what the task will do: push."),
    untrusted_input: bool = typer.Option(False, "--untrusted-input", help="The task reads content from strangers."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Agent profile whose environment to show."),
) -> int:
    """Show the level posture would pick, every rule's evidence, and what the repo file asked for, without starting anything."""
    from . import envpolicy, gitutil, profiles
    from .config import load_settings
    from .policy.decide import decide

    req = _request(path, "auto", profile, intent, untrusted_input)
    project = gitutil.resolve_project(req.path)
    settings = load_settings(project)
    prof = profiles.load(profile or settings.profile)
    d = decide(project, settings, intent_push=req.intent_push, untrusted_input=req.untrusted_input)
    env = envpolicy.build_env(dict(os.environ), [*prof.env_pass, *prof.env_secrets, *settings.env_pass], settings.env_drop, {})
    env_report = {"profile": prof.name, "passed": env.masked(), "refused": env.refused}
    if as_json:
        _json({**d.to_json(), "env": env_report})
    else:
        _render_decision(d, env_report)
    return 0


@app.command()
def trust(
    path: Optional[Path] = PathArg,
    revoke: bool = typer.Option(False, "--revoke", help="Withdraw trust instead."),
) -> int:
    """Trust a project (the untrusted_repo rule stops firing) and clear its ratchet."""
    from . import audit, gitutil
    from .policy import trust as trust_store

    project = gitutil.resolve_project(path)
    if revoke:
        had = trust_store.untrust(project)
        audit.record("trust.revoke", project=str(project), had=had)
        _err(f"posture: {project} is no longer trusted" if had else f"posture: {project} was not trusted")
        return 0
    ratchet = trust_store.ratchet(project)
    trust_store.trust(project)
    audit.record("trust", project=str(project), cleared_ratchet=ratchet)
    _err(f"posture: trusted {project}" + (f"; ratchet at {ratchet['level']} cleared" if ratchet else ""))
    return 0


def _servers(path: Optional[Path]):
    from . import gitutil
    from .policy import mcp

    project = gitutil.resolve_project(path)
    return project, mcp.discover(project)


@mcp_app.command("list")
def mcp_list(path: Optional[Path] = PathArg, as_json: bool = typer.Option(False, "--json")) -> int:
    """Every MCP server the agent would load here, and whether it is approved."""
    from .policy import mcp

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
        _json({"project": str(project), "servers": rows, "unreadable": found.unreadable})
        return 0
    if not rows and not found.unreadable:
        _out("no MCP servers")
    for row in rows:
        target = row["url"] or " ".join([row["command"] or "?", *row["args"]])
        env = f" env: {', '.join(row['env'])}" if row["env"] else ""
        _out(f"{row['status']:10} {row['name']} ({row['source']}): {target}{env}")
    for item in found.unreadable:
        _out(f"unreadable {item}")
    return 0


@mcp_app.command("approve")
def mcp_approve(
    args: list[str] = typer.Argument(None, help="[PATH] NAME...: the servers to approve."),
    all_: bool = typer.Option(False, "--all", help="Approve every server found."),
) -> int:
    """Approve MCP servers as they are now (a later change makes them unfamiliar again)."""
    from . import audit
    from .policy import mcp

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
        _err(f"posture: approved {s.key}")
    return 0


@mcp_app.command("revoke")
def mcp_revoke(args: list[str] = typer.Argument(..., help="[PATH] NAME...: the servers to revoke.")) -> int:
    """Withdraw approval of MCP servers."""
    from . import audit
    from .policy import mcp

    path, names = _split_path_names(args)
    project, found = _servers(path)
    chosen = _pick(found.servers, names)
    removed = mcp.revoke(project, chosen)
    audit.record("mcp.revoke", project=str(project), servers=[s.key for s in chosen])
    _err(f"posture: revoked {removed} approval(s)")
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


# ---------------------------------------------------------------- host

@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> int:
    """What this host can do at each level, and how to fix what it cannot."""
    from . import levels, plugins
    from .config import load_settings

    settings = load_settings(Path.cwd())
    report = []
    for level in levels.LEVELS:
        for backend in plugins.backends_for(level):
            for check in backend.doctor(settings):
                report.append({"level": level, "backend": backend.name, "check": check.name, "ok": check.ok, "detail": check.detail, "fix": check.fix})
    if as_json:
        _json(report)
        return 0
    for row in report:
        mark = "ok  " if row["ok"] else "FAIL"
        fix = f"\n           fix: {row['fix']}" if (row["fix"] and not row["ok"]) else ""
        _out(f"{row['level']} {mark} {row['backend']}: {row['check']}: {row['detail']}{fix}")
    return 0


@app.command()
def setup(
    remove: bool = typer.Option(False, "--remove", help="Undo what setup did."),
    l3_kernel: bool = typer.Option(False, "--l3-kernel", help="Fetch Debian's cloud kernel for L3 guests into posture's data dir."),
) -> int:
    """Root, once per host (and per network namespace): the network helper, the L3 kernel, checks."""
    from . import audit, plugins
    from .config import load_settings

    settings = load_settings(Path.cwd())
    options = {"l3_kernel": l3_kernel}
    for backend in plugins.backends():
        steps = backend.teardown(settings) if remove else backend.setup(settings, options)
        for step in steps:
            _err(f"posture: {backend.name}: {step}")
    audit.record("setup.remove" if remove else "setup", options=options)
    return 0


# ---------------------------------------------------------------- audit

@audit_app.callback()
def audit_show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="One JSON record per line.")) -> None:
    """Show the audit log (every decision, session, trust, approval and escalation)."""
    from . import audit

    if ctx.invoked_subcommand:
        return
    for rec in audit.read():
        if as_json:
            print(json.dumps(rec, sort_keys=True))
        else:
            data = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in rec["data"].items())
            _out(f"{rec['seq']:5} {rec['time']} {rec['event']} {data}")


@audit_app.command("verify")
def audit_verify() -> int:
    """Check the hash chain; report the first broken record."""
    from . import audit
    from .errors import Refused

    verdict = audit.verify()
    if not verdict.ok:
        raise Refused(f"{audit.log_path()}:{verdict.broken_at}: audit log broken: {verdict.reason}", fix="keep the file for investigation; records before that line verify")
    _err(f"posture: audit log intact: {verdict.records} records")
    return 0


# ---------------------------------------------------------------- entry point

def _version(value: bool) -> None:
    if value:
        print(f"posture {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    """posture: an isolation ladder for coding agents."""


def _load_plugin_commands() -> None:
    from . import plugins

    plugins.manager().hook.posture_commands(app=app)


def _internal(exc: BaseException) -> int:
    if os.environ.get("POSTURE_DEBUG"):
        raise exc
    _err(f"posture: internal error: {exc.__class__.__name__}: {exc} (fix: rerun with POSTURE_DEBUG=1 for the traceback and report it)")
    return EX_SOFTWARE


def main(argv: list[str] | None = None) -> None:
    """Console entry point: split off `-- CMD`, run the command, map errors to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        cut = args.index("--")
        args, _PASSTHROUGH[:] = args[:cut], args[cut + 1 :]
    code = EX_SOFTWARE
    try:
        _load_plugin_commands()
        command = typer.main.get_command(app)
        result = command.main(args=args, prog_name="posture", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except PostureError as exc:
        _err(f"posture: {exc.line()}")
        code = exc.exit_code
    except _CLICK_USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            _err(exc.format_message())
        else:
            ctx = getattr(exc, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx else ""
            _err(f"posture: {exc.format_message()}{where}")
        code = EX_USAGE
    except _CLICK_EXCEPTION as exc:
        _err(f"posture: {exc.format_message()}")
        code = EX_USAGE
    except Exception as exc:
        if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):
            code = exc.exit_code
        elif isinstance(exc, BrokenPipeError):
            code = 0
        elif type(exc).__name__ == "Abort":
            _err("posture: aborted")
            code = 130
        else:
            code = _internal(exc)
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
