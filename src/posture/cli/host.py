"""Commands on the host and the record: doctor, setup, audit."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import UsageError
from .app import app, audit_app, emit_json, err, out


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> int:
    """What this host can do at each level, and how to fix what it cannot."""
    from .. import levels, plugins
    from ..plugins import load_settings

    settings = load_settings(Path.cwd())
    report = []
    for level in levels.LEVELS:
        for backend in plugins.backends_for(level):
            for check in backend.doctor(settings):
                report.append({"level": level, "backend": backend.name, "check": check.name, "ok": check.ok, "detail": check.detail, "fix": check.fix})
    report.append(_credentials_row(settings.profile, settings.credentials))
    if as_json:
        emit_json(report)
        return 0
    for row in report:
        mark = "ok  " if row["ok"] else "FAIL"
        fix = f"\n           fix: {row['fix']}" if (row["fix"] and not row["ok"]) else ""
        out(f"{row['level']} {mark} {row['backend']}: {row['check']}: {row['detail']}{fix}")
    return 0


def _credentials_row(profile_name: str, user: dict | None = None) -> dict:
    """The agent's credentials the default profile would broker through the gateway (and where each
    comes from: `user` is the config's [credentials.NAME], whose commands doctor runs), and the missing ones."""
    import os

    from .. import paths, profiles
    from ..gateway import broker

    try:
        prof = profiles.load(profile_name)
    except UsageError as exc:
        return {"level": "all", "backend": "gateway", "check": "credentials", "ok": False, "detail": exc.message, "fix": exc.fix}
    found = broker.survey(prof, dict(os.environ), paths.home_dir(), user=user, run=True)
    configured = bool(found["failed"])  # a source the user set up gave nothing
    ok = not configured and (bool(found["brokered"]) or not (prof.credential_env or prof.credential_files))
    fix = "" if ok else ("fix the [credentials] source named above in your posture config (a session would refuse to start)" if configured
                         else f"log the agent in outside posture (or set {', '.join(prof.credential_env) or 'its API key'})")
    return {"level": "all", "backend": "gateway", "check": f"credentials ({prof.name})", "ok": ok, "detail": broker.describe(found),
            "fix": fix, "credentials": found}


@app.command()
def setup(
    remove: bool = typer.Option(False, "--remove", help="Undo what setup did."),
    l3_kernel: bool = typer.Option(False, "--l3-kernel", help="Fetch Debian's cloud kernel for L3 guests into posture's data dir."),
    purge: bool = typer.Option(False, "--purge", help="With --remove: delete fetched assets (the L3 kernel) too."),
) -> int:
    """Root, once per host (and per network namespace): the network helper, the L3 kernel, checks."""
    from .. import audit, plugins
    from ..plugins import load_settings

    settings = load_settings(Path.cwd())
    if purge and not remove:
        raise UsageError("--purge goes with --remove", fix="`posture setup --remove --purge`")
    options = {"l3_kernel": l3_kernel}
    for backend in plugins.backends():
        steps = backend.teardown(settings, purge) if remove else backend.setup(settings, options)
        for step in steps:
            err(f"posture: {backend.name}: {step}")
    audit.record("setup.remove" if remove else "setup", options=options)
    return 0


# ---------------------------------------------------------------- audit

@audit_app.callback()
def audit_show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="One JSON record per line.")) -> None:
    """Show the audit log (every decision, session, trust, approval and escalation)."""
    from .. import audit

    if ctx.invoked_subcommand:
        return
    for rec in audit.read():
        if as_json:
            print(json.dumps(rec, sort_keys=True))
        else:
            data = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in rec["data"].items())
            out(f"{rec['seq']:5} {rec['time']} {rec['event']} {data}")


@audit_app.command("verify")
def audit_verify() -> int:
    """Check the hash chain; report the first broken record."""
    from .. import audit
    from ..errors import Refused

    verdict = audit.verify()
    if not verdict.ok:
        raise Refused(f"{audit.log_path()}:{verdict.broken_at}: audit log broken: {verdict.reason}", fix="keep the file for investigation; records before that line verify")
    err(f"posture: audit log intact: {verdict.records} records")
    return 0
