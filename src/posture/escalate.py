"""Move a running task up the ladder without losing work.

Steps, each recorded in the lower session's record (so a killed posture resumes where it
stopped) and in the audit log:

1. checkpoint: the project's work tree goes into refs/posture/<session>/checkpoint-N;
2. freeze: the lower session stops acting (cgroup freezer, VM pause);
3. start: the higher session starts (parent = the lower one), from the project and the
   checkpoint, with the same per-project agent state;
4. launch: the agent continues there (the profile's `resume` command);
5. stop: the lower session is torn down, and the project's ratchet is raised.

If a step fails, the checkpoint stays, the lower session stays frozen, and `posture status`
says how to retry (`posture escalate --session ID`) or roll back (`--abort`).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from . import audit, checkpoint, levels, plugins, profiles, runner
from .plugins import load_settings
from .errors import PostureError, Refused, Unavailable, UsageError
from .policy import trust
from .policy.decide import decide
from .session import ESCALATED, FROZEN, LIVE, RUNNING, SessionRecord, SessionStore


def _fault(step: str) -> None:
    """Test hook: POSTURE_FAULT_AT=<step> kills this process right before that step."""
    if os.environ.get("POSTURE_FAULT_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def choose_target(record: SessionRecord, to: str | None) -> str:
    """The level to move to: `to`, or what the rules now give, at least one rung up and available here."""
    current = record.level
    if to is not None:
        runner.parse_level(to)
        runner.ensure_not_lower(current, to)
        return to
    higher = levels.above(current)
    if not higher:
        raise Refused(f"session {record.id} is already at {current}, the top of the ladder", fix="nothing higher to move to")
    project = Path(record.project)
    settings = load_settings(project)
    ruled = decide(project, settings, check_backend=False).ruled_level
    floor = levels.highest(ruled, higher[0])
    unavailable = []
    for level in [lvl for lvl in higher if levels.rank(lvl) >= levels.rank(floor)]:
        for backend in plugins.backends_for(level):
            avail = backend.availability(settings)
            if avail.ok:
                return level
            unavailable.append(f"{level} ({backend.name}: {avail.reason})")
    raise Unavailable(
        f"no level above {current} (at least {floor}, by the rules) is available here: {'; '.join(unavailable) or 'none installed'}",
        fix="configure a higher backend (see `posture doctor`), or pass --to",
    )


def _save(record: SessionRecord) -> None:
    esc = record.data.get("escalation")
    if esc and esc.get("step") != "done":
        ref = esc.get("checkpoint")
        record.note = (
            f"escalation {esc['from']} -> {esc['to']} at step '{esc['step']}'"
            + (f"; work is safe in {ref}" if ref else "")
            + f". If posture was interrupted: retry `posture escalate --session {record.id}`, roll back `posture escalate --session {record.id} --abort`"
        )
    SessionStore().save(record)


def escalate(session_id: str | None, to: str | None, reason: str) -> SessionRecord:
    """Escalate (or resume a stopped escalation of) a session; return the new session's record."""
    store = SessionStore()
    record = runner.refresh(store.get(session_id)) if session_id else runner.live_record(None)
    esc = record.data.get("escalation")
    if esc and esc.get("step") == "done":
        raise UsageError(f"session {record.id} was already escalated to {esc.get('child')}", fix="escalate that session instead")
    if not esc:
        if record.status not in LIVE:
            raise UsageError(f"session {record.id} is {record.status}", fix="only a running session can be escalated")
        target = choose_target(record, to)
        esc = {"to": target, "reason": reason, "step": "checkpoint", "started": _now(), "from": record.level}
        record.data["escalation"] = esc
        _save(record)
        audit.record("escalate.begin", session=record.id, project=record.project, frm=record.level, to=target, reason=reason)
    elif to is not None and to != esc["to"]:
        raise UsageError(f"session {record.id} is in the middle of an escalation to {esc['to']}", fix=f"resume it with `posture escalate --session {record.id}` or roll back with --abort")
    target = esc["to"]
    project = Path(record.project)
    try:
        if esc["step"] == "checkpoint":
            _fault("checkpoint")
            cp = checkpoint.capture(project, record.id, message=f"posture: {record.id} escalating {record.level} -> {target}: {reason or 'no reason given'}")
            esc.update(checkpoint=cp.ref, commit=cp.commit, step="freeze")
            record.checkpoints.append(cp.ref)
            _save(record)
            audit.record("escalate.checkpoint", session=record.id, ref=cp.ref, commit=cp.commit)
        if esc["step"] == "freeze":
            _fault("freeze")
            runner.reopen(record).freeze()
            record.status = FROZEN
            esc["step"] = "start"
            _save(record)
            audit.record("escalate.freeze", session=record.id)
        if esc["step"] == "start":
            _fault("start")
            child = _start_child(record, target)
            esc.update(child=child.id, step="launch")
            _save(record)
            audit.record("escalate.start", session=record.id, child=child.id, level=target, backend=child.backend,
                         credentials=_given(child.id))
        if esc["step"] == "launch":
            _fault("launch")
            child_record = store.get(esc["child"])
            argv = _agent_argv(record, child_record.profile)
            runner.reopen(child_record).launch(argv)
            child_record.agent_argv = argv
            _save(child_record)
            esc["step"] = "stop"
            _save(record)
            audit.record("escalate.launch", session=child_record.id, argv=argv)
        if esc["step"] == "stop":
            _fault("stop")
            runner.down(record.id)
            record = store.get(record.id)
            record.data["escalation"] = {**esc, "step": "done", "finished": _now()}
            record.status = ESCALATED
            record.note = f"escalated to {esc['child']} ({target})"
            _save(record)
            trust.raise_ratchet(project, target, esc["child"])
            audit.record("escalate.done", session=record.id, child=esc["child"], level=target, ratchet=target)
    except BaseException as exc:
        record = store.get(record.id)
        step = record.data.get("escalation", {}).get("step", "?")
        ref = record.data.get("escalation", {}).get("checkpoint")
        safe = f"work is safe in {ref}" if ref else "nothing was changed"
        frozen = "; the lower session is frozen" if record.status == FROZEN else ""
        record.note = (
            f"escalation to {target} stopped at step '{step}': {exc}; {safe}{frozen}. "
            f"Retry: `posture escalate --session {record.id}`; roll back: `posture escalate --session {record.id} --abort`"
        )
        SessionStore().save(record)  # not _save: keep this note, which names the failure
        audit.record("escalate.failed", session=record.id, step=step, error=str(exc), checkpoint=ref)
        if isinstance(exc, PostureError):
            exc.message = f"{exc.message} (work is safe: {safe}{frozen}; see `posture status`)"
        raise
    return store.get(record.data["escalation"]["child"])


def _agent_argv(record: SessionRecord, profile: str) -> list[str]:
    """What the higher session runs: the lower one's agent, as the profile's `resume` command."""
    prof = profiles.load(profile)
    argv = record.agent_argv or prof.resume
    return prof.resume if argv == prof.command else argv


def _start_child(record: SessionRecord, target: str) -> SessionRecord:
    """Start the higher session, or reuse the one an interrupted run already started."""
    store = SessionStore()
    esc = record.data["escalation"]
    if esc.get("child"):
        previous = runner.refresh(store.get(esc["child"]))
        if previous.status == RUNNING:
            return previous
        try:
            runner.down(previous.id)  # half-started by an interrupted run: clean it up, start afresh
        except PostureError:
            pass
    req = runner.Request(path=Path(record.project), level=target, profile=record.profile, on_trigger=record.on_trigger,
                         network=record.network)
    p = runner.plan(req)
    session = runner.open_session(p, parent=record.id, network=record.network)
    child = session.record
    child.start_from = esc.get("checkpoint")
    # a backend may start the agent as part of start(), on the connection it already holds (L4 does)
    child.launch = _agent_argv(record, child.profile)
    store.save(child)
    esc["child"] = child.id  # known before its keeper starts, so an interrupted run finds it
    _save(record)
    _carry_sentinels(record.id, child.id)
    try:
        runner.spawn_keeper(child)
    except BaseException:
        try:
            runner.down(child.id)
        except Exception:  # noqa: BLE001 - the original failure matters more
            pass
        raise
    return store.get(child.id)


def _carry_sentinels(lower: str, higher: str) -> None:
    """The higher session reuses the lower one's sentinels (kept outside, in its runtime dir)."""
    from .gateway import carry
    from .session import session_runtime_dir

    carry.hand_over(session_runtime_dir(lower), session_runtime_dir(higher))


def _given(session_id: str) -> list[dict]:
    """Names, hosts and sources of the credentials a started session was given (never values)."""
    from .gateway import carry
    from .session import session_runtime_dir

    return carry.given(session_runtime_dir(session_id))


def moved_line(child: SessionRecord) -> str:
    """The line that tells the user where the task went."""
    return f"posture: {child.parent} escalated to {child.id} at {child.level} ({child.backend}); `posture attach --session {child.id}`"


def abort(session_id: str) -> SessionRecord:
    """Roll back a stopped escalation: stop the half-started higher session, thaw the lower one."""
    store = SessionStore()
    record = store.get(session_id)
    esc = record.data.get("escalation")
    if not esc or esc.get("step") == "done":
        raise UsageError(f"session {session_id} has no escalation to roll back", fix="see `posture status`")
    if esc.get("child"):
        try:
            runner.down(esc["child"])
        except PostureError:
            pass
    if record.status == FROZEN:
        runner.reopen(record).thaw()
        record.status = RUNNING
    record.data.pop("escalation")
    record.note = f"escalation to {esc['to']} rolled back; checkpoint {esc.get('checkpoint')} kept"
    _save(record)
    audit.record("escalate.abort", session=session_id, to=esc["to"], checkpoint=esc.get("checkpoint"))
    return record
