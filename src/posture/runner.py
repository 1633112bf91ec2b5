"""Orchestration: decide, open a session on the right backend, run, keep, attach, stop.

The CLI stays thin; everything a command does to sessions happens here.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import audit, gitutil, levels, plugins, profiles
from .config import ON_TRIGGER, Settings
from .plugins import load_settings
from .errors import Refused, Unavailable, UsageError
from .policy.decide import Decision, decide
from .session import (
    DEAD,
    ESCALATED,
    FAILED,
    LIVE,
    RUNNING,
    STARTING,
    STOPPED,
    PullResult,
    Session,
    SessionRecord,
    SessionStore,
    StartSpec,
    new_id,
    pid_alive,
    session_runtime_dir,
)
from .triggers.live import LiveTriggers
from .view import build_view

KEEPER_READY_TIMEOUT = 600.0
ESCALATION_WAIT = 180.0  # how long an attached terminal waits for a move up in progress


@dataclass
class Request:
    """What the user asked for on the command line."""

    path: Path | None = None
    level: str = "auto"
    profile: str | None = None
    intent_push: bool = False
    untrusted_input: bool = False
    network: str | None = None  # --network: the user's own choice of mode for this session
    on_trigger: str | None = None


@dataclass
class Plan:
    """A decided session, not yet started."""

    project: Path
    settings: Settings
    decision: Decision
    profile: profiles.Profile
    on_trigger: str | None = None


def parse_level(level: str) -> str | None:
    """'auto' -> None, a level name -> itself; anything else is a usage error."""
    if level == "auto":
        return None
    if not levels.is_level(level):
        raise UsageError(f"--level {level!r} is not a level", fix=f"use auto or one of {', '.join(levels.LEVELS)}")
    return level


def parse_network(mode: str | None) -> str | None:
    """--network: None (the config decides) or a mode; anything else is a usage error."""
    from .netpolicy import MODES

    if mode is not None and mode not in MODES:
        raise UsageError(f"--network {mode!r} is not a network mode", fix=f"use one of {', '.join(MODES)}")
    return mode


def plan(req: Request) -> Plan:
    """Resolve the project, load config, decide the level, and check its backend can run."""
    project = gitutil.resolve_project(req.path)
    settings = load_settings(project)
    requested = parse_level(req.level)
    if req.on_trigger is not None and req.on_trigger not in ON_TRIGGER:
        raise UsageError(f"--on-trigger {req.on_trigger!r} is not known", fix=f"use one of {', '.join(ON_TRIGGER)}")
    profile = profiles.load(req.profile or settings.profile)
    decision = decide(
        project,
        settings,
        intent_push=req.intent_push,
        untrusted_input=req.untrusted_input,
        requested=requested,
    )
    audit.record(
        "decision",
        project=str(project),
        level=decision.level,
        requested=requested,
        override=decision.override or None,
        rules=[{"rule": r.rule, "fired": r.fired, "level": r.level, "evidence": r.evidence} for r in decision.rules],
        ratchet=decision.ratchet,
        backend=decision.backend,
        available=decision.backend_available,
    )
    if requested and decision.ratchet and levels.rank(requested) < levels.rank(decision.ratchet["level"]):
        audit.record("ratchet.override", project=str(project), ratchet=decision.ratchet, requested=requested)
    if not decision.backend_available:
        name = decision.backend or "no backend"
        raise Unavailable(
            f"{decision.level} is needed ({decision.why()}) but {name} cannot run here: {decision.backend_reason}",
            fix=decision.backend_fix or f"configure a {decision.level} backend (see `posture doctor`)",
        )
    p = Plan(project, settings, decision, profile, req.on_trigger)
    return p


def announce(p: Plan, always: bool) -> None:
    """One line on stderr: the level, the backend, and why (always for `up`; for `exec` on a terminal)."""
    if always or os.isatty(2):
        warn = f" (WARNING: {p.decision.override})" if p.decision.override else ""
        print(f"posture: {p.decision.why()} [{p.decision.backend}]{warn}", file=sys.stderr, flush=True)


def _settings_for(record: SessionRecord) -> Settings:
    return load_settings(Path(record.project))


def open_session(p: Plan, parent: str | None = None, network: str | None = None) -> Session:
    """Create the session record and the backend's Session for a plan."""
    backend = plugins.backend_named(p.decision.backend or "")
    record = SessionRecord(
        id=new_id(),
        project=str(p.project),
        level=p.decision.level,
        backend=backend.name,
        profile=p.profile.name,
        parent=parent,
        network=network,
        on_trigger=p.on_trigger,
    )
    SessionStore().save(record)
    return backend.session(record, p.settings)


def start_spec(record: SessionRecord, settings: Settings, profile: profiles.Profile, live: LiveTriggers | None = None) -> StartSpec:
    """What `record`'s session starts from: its view (armed for live triggers), and the checkpoint and
    agent an escalation asked for."""
    view = build_view(Path(record.project), profile, settings, record.id, record.level, network=record.network)
    if live is not None:
        live.arm(view)
    return StartSpec(view=view, checkpoint=record.start_from, launch=record.launch)


def _watch(live: LiveTriggers, spec: StartSpec) -> None:
    live.watch(Path(spec.view.state_dir) / "home" if spec.view is not None and spec.view.state_dir else None)


def reopen(record: SessionRecord) -> Session:
    """The backend's Session for an existing record (from another process)."""
    backend = plugins.backend_named(record.backend)
    return backend.session(record, _settings_for(record))


def live_record(session_id: str | None, project: Path | None = None) -> SessionRecord:
    """The named session, or the only live one (of the project, if given); it must be live."""
    store = SessionStore()
    if session_id:
        record = refresh(store.get(session_id))
        if record.status not in LIVE:
            raise UsageError(f"session {session_id} is {record.status}", fix="see `posture status`; start a new one with `posture up`")
        return record
    live = [refresh(r) for r in store.live(str(project) if project else None)]
    live = [r for r in live if r.status in LIVE]
    if len(live) == 1:
        return live[0]
    if not live:
        raise UsageError("no running session", fix="start one with `posture up`")
    raise UsageError(f"{len(live)} sessions are running", fix="name one with --session (see `posture status`)")


def refresh(record: SessionRecord) -> SessionRecord:
    """Mark a live session whose keeper died as dead."""
    if record.status in LIVE and record.keeper_pid and not pid_alive(record.keeper_pid):
        record = SessionStore().update(record.id, status=DEAD, note="its keeper process is gone; `posture down --session " + record.id + "` cleans up")
    return record


def _start(session: Session, spec: StartSpec) -> None:
    store = SessionStore()
    record = session.record
    audit.record("session.start", session=record.id, project=record.project, level=record.level, backend=record.backend, parent=record.parent)
    try:
        session.start(spec)
    except BaseException as exc:
        session.record.status = FAILED
        session.record.note = f"start failed: {exc}"
        store.save(session.record)
        audit.record("session.failed", session=record.id, error=str(exc))
        try:
            session.stop()
        except Exception:  # noqa: BLE001 - best effort after a failed start
            pass
        raise
    session.record.status = RUNNING
    store.save(session.record)


def _stop(session: Session, status: str = STOPPED) -> None:
    try:
        session.stop()
    finally:
        SessionStore().update(session.record.id, status=status)
        audit.record("session.stop", session=session.record.id, status=status)


def exec_fresh(req: Request, argv: list[str]) -> int:
    """`posture exec [PATH] -- CMD`: run CMD in a new session, stream it, tear down, return its code."""
    p = plan(req)
    announce(p, always=bool(p.decision.override))
    session = open_session(p, network=req.network)
    live = LiveTriggers(session.record, p.settings, p.profile, kept=False)
    try:
        spec = start_spec(session.record, p.settings, p.profile, live)
        _start(session, spec)
        _watch(live, spec)
        try:
            return session.exec(argv, tty=os.isatty(0) and os.isatty(1))
        finally:
            _stop(session)
    finally:
        live.close()


def exec_command(
    path: Path | None,
    level: str,
    profile: str | None,
    intent: str | None,
    untrusted_input: bool,
    session: str | None,
    argv: list[str],
    on_trigger: str | None = None,
    network: str | None = None,
) -> int:
    """`posture exec`, shared by the CLI and its fast path: validate, then run fresh or in a session."""
    if not argv:
        raise UsageError("no command given", fix="put the command after --, e.g. `posture exec -- make test`")
    if intent not in (None, "push"):
        raise UsageError(f"--intent {intent!r} is not known", fix="use --intent push")
    if session:
        if path is not None or level != "auto" or profile or intent or untrusted_input or on_trigger or network:
            raise UsageError("--session cannot be combined with PATH, --level, --profile, --intent, --untrusted-input, --on-trigger or --network",
                             fix="drop them, or drop --session")
        return exec_in(session, argv)
    req = Request(path=path, level=level, profile=profile, intent_push=intent == "push", untrusted_input=untrusted_input, on_trigger=on_trigger,
                  network=parse_network(network))
    return exec_fresh(req, argv)


def exec_in(session_id: str | None, argv: list[str]) -> int:
    """`posture exec --session ID -- CMD`: run CMD in a running session."""
    record = live_record(session_id)
    audit.record("session.exec", session=record.id, argv=argv)
    return reopen(record).exec(argv, tty=os.isatty(0) and os.isatty(1))


# ---------------------------------------------------------------- keeper (detached sessions)

def spawn_keeper(record: SessionRecord) -> None:
    """Start the keeper that holds `record`'s session open, and wait until it is up."""
    runtime = session_runtime_dir(record.id)
    log = open(runtime / "keeper.log", "ab")
    r, w = os.pipe()
    argv = [sys.executable, "-m", "posture.keeper", record.id, str(w)]  # not through the CLI framework: faster
    proc = subprocess.Popen(argv, pass_fds=[w], start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True)
    os.close(w)
    log.close()
    answer = b""
    deadline = time.monotonic() + KEEPER_READY_TIMEOUT
    try:
        while not answer.startswith(b"ok") and time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                break
            answer += chunk
    finally:
        os.close(r)
    if not answer.startswith(b"ok"):
        proc.wait(timeout=30)
        message = answer.decode(errors="replace").strip() or f"keeper exited with {proc.returncode}; see {runtime / 'keeper.log'}"
        raise Unavailable(f"session {record.id} did not start: {message}", fix=f"see {runtime / 'keeper.log'} and `posture doctor`")


def keeper_main(session_id: str, ready_fd: int | None) -> int:
    """Hold a session open until SIGTERM (run as `python -m posture.keeper`)."""
    if ready_fd is not None:
        os.set_inheritable(ready_fd, False)
    stopping = False
    wake_r, wake_w = os.pipe()  # the signal handler wakes the wait below at once

    def on_term(signo: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        try:
            os.write(wake_w, b"x")
        except OSError:
            pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    live: LiveTriggers | None = None
    try:
        store = SessionStore()
        record = store.get(session_id)
        settings = _settings_for(record)
        session = plugins.backend_named(record.backend).session(record, settings)
        session.record.keeper_pid = os.getpid()
        profile = profiles.load(record.profile)
        live = LiveTriggers(record, settings, profile, kept=True)
        spec = start_spec(record, settings, profile, live)
        _start(session, spec)
    except BaseException as exc:  # noqa: BLE001 - reported to the waiting CLI
        if live is not None:
            live.close()
        if ready_fd is not None:
            os.write(ready_fd, f"error: {exc}".encode())
        return 1
    if ready_fd is not None:
        os.write(ready_fd, b"ok")
        os.close(ready_fd)
    _watch(live, spec)
    try:
        while not stopping:
            select.select([wake_r], [], [], 0.2)
            if not stopping and not session.alive():
                break
        _stop(session)
    finally:
        live.close()
    return 0


def up(req: Request, argv: list[str] | None, detach: bool) -> tuple[SessionRecord, int]:
    """`posture up`: start a kept session, launch the agent, and attach unless `detach`."""
    p = plan(req)
    announce(p, always=True)
    command = argv or p.profile.command
    if p.decision.level in ("l2", "l3"):  # before anything starts: the agent must be in the view (else 69)
        from . import toolchains

        v = build_view(p.project, p.profile, p.settings, "check", p.decision.level, credentials=False)
        toolchains.require(command[0], v.toolchains, v.system_ro, p.settings.mounts_ro)
    session = open_session(p, network=req.network)
    record = session.record
    spawn_keeper(record)
    record = SessionStore().get(record.id)
    session = reopen(record)
    session.launch(command)
    record = SessionStore().update(record.id, agent_argv=command)
    audit.record("agent.launch", session=record.id, argv=command)
    if detach:
        return record, 0
    session, code = _attach_following(session)
    return SessionStore().get(session.record.id), code


def attach(session_id: str | None) -> int:
    """`posture attach`: connect the terminal to a session's agent."""
    record = live_record(session_id)
    _, code = _attach_following(reopen(record))
    return code


def _escalated_to(session_id: str, wait: float = ESCALATION_WAIT) -> SessionRecord | None:
    """The session `session_id` moved to, waiting for a move in progress to finish; None if it did not move."""
    store = SessionStore()
    deadline = time.monotonic() + wait
    while True:
        record = store.get(session_id)
        esc = record.data.get("escalation") or {}
        if record.status == ESCALATED and esc.get("child"):
            return store.get(esc["child"])
        if not esc or record.status not in LIVE or time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _attach_following(session: Session) -> tuple[Session, int]:
    """Attach the terminal to the session's agent; when the session moved up meanwhile (a live trigger,
    or `posture escalate` from elsewhere), follow it to the higher one. The session whose agent is gone
    when the user comes back is stopped."""
    while True:
        code = session.attach()
        child = _escalated_to(session.record.id)
        if child is None:
            break
        print(f"posture: session {session.record.id} moved to {child.id} at {child.level}; attaching there", file=sys.stderr, flush=True)
        session = reopen(child)
    if not session.agent_running():
        down(session.record.id)
    return session, code


def down(session_id: str) -> SessionRecord:
    """Stop a session: ask its keeper, or stop it directly when it has none."""
    store = SessionStore()
    record = store.get(session_id)
    if record.keeper_pid and pid_alive(record.keeper_pid):
        os.kill(record.keeper_pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while pid_alive(record.keeper_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(record.keeper_pid):
            os.kill(record.keeper_pid, signal.SIGKILL)
    record = store.get(session_id)
    if record.status in (*LIVE, DEAD, FAILED):
        try:
            reopen(record).stop()
        finally:
            record = store.update(session_id, status=STOPPED)
            audit.record("session.stop", session=session_id, status=STOPPED)
    return record


def down_all() -> list[SessionRecord]:
    """Stop every live session."""
    return [down(r.id) for r in SessionStore().all() if r.status in (*LIVE, DEAD)]


def ensure_not_lower(current: str, target: str) -> None:
    """Refuse (77) a move that is not strictly up the ladder."""
    if levels.rank(target) <= levels.rank(current):
        raise Refused(f"cannot move from {current} to {target}: posture only moves a task up", fix=f"choose one of: {', '.join(levels.above(current)) or 'none (already at the top)'}")


def pull(session_id: str | None, project: Path | None = None) -> PullResult:
    """`posture pull`: the named session's work, or else that of the project's newest session whose work
    lives elsewhere (running or stopped: an `exec --level l4` session is stopped by the time its work is
    pulled; its work waits on the host). A local session answers that its work is already here."""
    store = SessionStore()
    if session_id:
        record = store.get(session_id)
    else:
        proj = str(gitutil.resolve_project(project))
        remote = {b.name for b in plugins.backends() if b.remote_work}
        mine = [r for r in store.all() if r.project == proj and r.backend in remote and r.checkpoints]
        if not mine:
            levels_ = "/".join(sorted({b.level.upper() for b in plugins.backends() if b.remote_work}))
            raise UsageError(f"no {levels_} session of {proj} has work to pull", fix="name one with --session (see `posture status`)")
        record = mine[-1]
    session = reopen(record)
    try:
        return session.pull()
    finally:
        session.close()


__all__ = [
    "Request", "Plan", "plan", "open_session", "reopen", "exec_fresh", "exec_in", "up", "attach", "down",
    "down_all", "keeper_main", "live_record", "refresh", "pull", "start_spec", "STARTING",
]
