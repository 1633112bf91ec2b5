"""Run `posture verify`: a fresh session per level, the probe inside, one row per promise.

The sessions are ordinary ones (runner.plan / open_session / start / stop: decided, audited,
listed in `posture status`), started on the user's project with its own settings. The
probe runs gently there: it opens protected files for writing without writing, and the
only file it makes in the project (a marker, to show the project is writable) is removed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import audit, levels, runner
from ..config import Settings
from ..errors import EX_UNAVAILABLE, PostureError, Unavailable
from ..netpolicy import NetworkPolicy, policy_for
from . import canary, probe_source, promises, targets
from .promises import Row

PROBE_TIMEOUT = 5  # seconds per network try inside


@dataclass
class Outcome:
    """Every row, and the levels that were asked for explicitly but could not run."""

    rows: list[Row] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)

    def exit_code(self) -> int:
        """0 every promise held; 1 one did not; 69 a requested level could not run."""
        if any(r.held is False for r in self.rows):
            return 1
        ran = any(r.promise != promises.SESSION for r in self.rows)
        return EX_UNAVAILABLE if self.unavailable or not ran else 0

    def broken(self) -> list[Row]:
        """The rows of promises that did not hold."""
        return [r for r in self.rows if r.held is False]


def requested_levels(level: str) -> list[str]:
    """`all` -> every level; else the one named (exit 64 for anything else)."""
    from ..errors import UsageError

    if level == "all":
        return list(levels.LEVELS)
    if not levels.is_level(level):
        raise UsageError(f"--level {level!r} is not a level here", fix=f"use all or one of {', '.join(levels.LEVELS)}")
    return [level]


def verify(path: Path | None, level: str, profile: str | None = None) -> Outcome:
    """Run the probe at each requested level that can run here; `all` reports the others as not run."""
    from ..plugins import load_settings
    from ..policy.decide import choose_backend

    wanted = requested_levels(level)
    outcome = Outcome()
    project = path
    for lvl in wanted:
        if level == "all":
            settings = load_settings(_project(project))
            name, ok, reason, fix = choose_backend(lvl, settings)
            if not ok:
                outcome.rows += promises.not_run(lvl, f"not run: {name or 'no backend'} cannot run here: {reason}" + (f" (fix: {fix})" if fix else ""))
                continue
        rows, ran = _level(project, lvl, profile)
        outcome.rows += rows
        if not ran:
            outcome.unavailable.append(lvl)
    audit.record("verify", levels=wanted, held=sum(r.held is True for r in outcome.rows),
                 broken=[f"{r.level} {r.promise}" for r in outcome.broken()], untested=sum(r.held is None for r in outcome.rows))
    return outcome


def _project(path: Path | None) -> Path:
    from .. import gitutil

    return gitutil.resolve_project(path)


def _level(path: Path | None, level: str, profile: str | None) -> tuple[list[Row], bool]:
    """The rows of one level, and whether a session ran (or was refused for the network: that is a row, not 69)."""
    try:
        plan = runner.plan(runner.Request(path=path, level=level, profile=profile))
    except Unavailable as exc:
        return promises.not_run(level, f"not run: {exc.line()}"), False
    local = level != "l4"  # at L4 the network is the host's own: only public targets and tailnet peers
    picked = targets.pick(_policy(plan.settings), kinds=targets.KINDS if local else ("public",))
    peer_targets = [] if local else _peer_targets(plan.settings)
    listener = None
    planted = canary.plant(list(plan.profile.state_dirs), plan.profile.name)
    try:
        if local and not picked.loopback and "loopback" not in picked.given:
            listener = targets.LoopbackListener()
            picked.loopback = listener.targets()
            picked.notes.pop("loopback", None)
        session = runner.open_session(plan)
        spec = runner.start_spec(session.record, plan.settings, plan.profile)
        try:
            runner._start(session, spec)
        except Unavailable as exc:
            detail = _network_refusal(plan.settings) if level in ("l2", "l3") else None
            if detail:
                return promises.network_refused(level, detail), True
            return promises.not_run(level, f"not run: the session did not start: {exc.line()}"), False
        marker = f".posture-verify-{uuid.uuid4().hex[:8]}"
        config = _config(level, plan, spec, planted, picked, peer_targets, marker)
        try:
            code, out, err = _captured(lambda: session.exec(["python3", "-c", probe_source(), json.dumps(config)], tty=False))
        finally:
            runner._stop(session)
        visible = _take_marker(Path(plan.project) / marker) if local else None
    finally:
        canary.remove(planted)
        if listener:
            listener.close()
    report = _report(out)
    if report is None:
        tail = (err or out).strip().splitlines()[-3:]
        return promises.not_run(level, f"not run: the probe printed no report (exit {code}): {' | '.join(tail) or 'no output'}"), False
    ctx = promises.Context(cred=planted.cred, state=planted.state, cred_file=str(planted.cred_file), targets=picked,
                           peers=[t.key for t in peer_targets], project_visible=visible)
    return promises.rows_for(level, report, ctx), True


def _policy(settings: Settings) -> NetworkPolicy:
    return policy_for(list(settings.network_block))


def _peer_targets(settings: Settings) -> list[targets.Target]:
    from ..l4 import tailscale

    try:
        doc = tailscale.status()
    except PostureError:
        return []
    host = str(settings.backend.get("l4", {}).get("host") or "")
    return targets.tailnet_peers(doc, host)


def _config(level: str, plan: runner.Plan, spec: object, planted: canary.Canaries, picked: targets.Targets,
            peer_targets: list[targets.Target], marker: str) -> dict[str, object]:
    """The probe's config for this level."""
    view = getattr(spec, "view", None)
    local = level != "l4"
    home = view.home if (local and view is not None) else "~"
    project = str(plan.project) if local else "."
    protected = [os.path.relpath(p, project) for p in (view.protected if view is not None else []) if p.startswith(project + "/")] if local else []
    # At L4 the host's own files are not the user's: only the planted key (and its text anywhere) counts.
    creds = [*(f"{home}/{rel}" for rel in canary.CREDENTIAL_PATHS), str(planted.cred_file)] if local else [f"~/.ssh/{planted.cred_file.name}"]
    # At L4 the network is the host's own: only the public target and the tailnet peers are tried from it.
    tried = [*picked.all(), *peer_targets] if local else [*picked.public, *peer_targets]
    return {
        "gentle": True,
        "kernel": level == "l2",
        "canary": planted.cred,
        "canaries": [planted.state],
        "secret": planted.secret,
        "home": home,
        "project": project,
        "project_marker": marker if local else None,  # at L4 it would travel back with the session's work
        "creds": creds,
        "protected": protected,
        "targets": [[t.addr, t.port] for t in tried],
        "timeout": PROBE_TIMEOUT,
        "scan_roots": None if local else ["~", "/tmp"],
        "scan_skip": [project] if local else ["."],
    }


def _network_refusal(settings: Settings) -> str | None:
    """The helper's own account when it answers but its rule is not in force; None otherwise."""
    from ..netd import client as netd

    try:
        status = netd.request(netd.socket_path(settings), {"op": "status"}, timeout=5)
    except (OSError, ValueError, netd.NetdError):
        return None
    if status.get("verified"):
        return None
    return str(status.get("detail") or "unverified")


def _take_marker(path: Path) -> bool:
    """Whether the probe's project write reached the host; remove it."""
    seen = path.exists()
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return seen


def _captured(fn: Callable[[], int]) -> tuple[int, str, str]:
    """Run fn with stdin from /dev/null and stdout/stderr into files; return (code, out, err)."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as null:
        saved = [os.dup(0), os.dup(1), os.dup(2)]
        try:
            os.dup2(null.fileno(), 0)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            code = fn()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in enumerate(saved):
                os.dup2(copy, fd)
                os.close(copy)
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def _report(output: str) -> dict | None:
    for line in output.replace("\r", "").splitlines():
        if "PROBE-RESULT:" in line:
            try:
                doc = json.loads(line.split("PROBE-RESULT:", 1)[1])
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
    return None
