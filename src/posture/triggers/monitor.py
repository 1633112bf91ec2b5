"""What happens when a live trigger fires: escalate, deny or log (`[escalation] on_trigger`).

- escalate: the triggering call is refused with a message the model sees, and the session is
  moved up by itself (escalator.py: the steps of `posture escalate`, the trigger as the
  reason); from then on every further tool call of the lower session is refused, so nothing
  of the agent's work runs at the lower level after the trigger. A `posture exec` session has
  nothing to carry the agent on: there escalate acts as deny, and says so.
- deny: the call is refused; the message names the rule, the evidence and what the user can do.
- log: the call runs; the trigger is recorded.
A trigger whose level the session already has changes nothing (it is recorded). A target level
that cannot run here denies, naming what to configure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .. import levels, plugins
from ..config import Settings
from ..policy.decide import decide
from ..policy.events import ALLOW, DENY, Event, Fired, Verdict
from ..session import SessionRecord, session_runtime_dir
from . import record


HOOK_SWITCHES = ("CLAUDE_CODE_SIMPLE", "CLAUDE_CODE_SAFE_MODE", "--bare", "disableAllHooks")


def hook_switch(event: Event) -> str | None:
    """The switch that would turn Claude Code's hooks off, if a Bash command names one."""
    if event.tool_name != "Bash":
        return None
    command = str(event.tool_input.get("command", ""))
    return next((s for s in HOOK_SWITCHES if s in command), None)


def _what_to_do(fired: list[Fired], session_id: str, target: str) -> str:
    hints = []
    for f in fired:
        if f.rule == "untrusted_input":
            hints.append("trust the host in [triggers] trusted_hosts of your posture config, or approve the MCP server (`posture mcp approve`)")
        elif f.rule == "push_intent":
            hints.append(f"push from a session started with `posture up --intent push` (it runs at {f.level})")
        elif f.rule == "unfamiliar_mcp":
            hints.append("review and `posture mcp approve` the server")
        elif f.rule == "untrusted_repo":
            hints.append("`posture trust` the project if it is yours")
    hints.append(f"or move this session up: `posture escalate --session {session_id} --to {target}`")
    return "; ".join(dict.fromkeys(hints))


@dataclass
class Monitor:
    """Judges one session's events and acts on the triggers they fire."""

    record_: SessionRecord
    settings: Settings
    kept: bool  # held by a keeper (`posture up`): it can move up by itself; an `exec` session cannot
    on_trigger: str
    latched: str | None = None  # once set, every further tool call is refused with this reason
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def project(self) -> Path:
        """The session's project."""
        return Path(self.record_.project)

    @property
    def level(self) -> str:
        """The session's level."""
        return self.record_.level

    def fired(self, event: Event) -> list[Fired]:
        """Every rule that fires on `event`, with the level each asks for."""
        out = []
        for rule in plugins.rules():
            finding = rule.on_event(event, self.project, self.settings)
            if finding is not None and finding.fired:
                out.append(Fired(rule.name, self.settings.rule_level(rule.name, rule.default_level), finding.evidence))
        return out

    def judge(self, event: Event) -> Verdict:
        """The verdict on a reported tool call (the report channel's `judge`)."""
        with self._lock:
            if self.latched:
                return Verdict(DENY, self.latched)
            switch = hook_switch(event)
            if switch:
                record.trigger(self.record_.id, self.level, "hook_bypass", f"the command names {switch}", event.describe(), "denied", None)
                return Verdict(DENY, f"posture: this command would run an agent with posture's live triggers switched off ({switch}); it is refused")
            fired = self.fired(event)
            if not fired:
                return Verdict(ALLOW)
            return self._act(fired, event, call=True)

    def project_changed(self, fired: list[Fired], detail: str) -> None:
        """The watcher saw the project change so that rules fire (no call to refuse)."""
        with self._lock:
            self._act(fired, Event(kind="project_changed", detail=detail), call=False)

    def cleared(self, detail: str) -> None:
        """The watcher saw the cause of a deny-latch go away (e.g. the server was approved)."""
        with self._lock:
            if self.latched and self.on_trigger == "deny":
                self.latched = None
                record.append(self.record_.id, self.level, "watch", "the project", "allowed", detail, outcome="cleared")

    def target(self, fired: list[Fired]) -> str:
        """Where the rules now put the session: never lower than it is."""
        ruled = decide(self.project, self.settings, check_backend=False).ruled_level
        return levels.highest(self.level, ruled, *(f.level for f in fired))

    def _act(self, fired: list[Fired], event: Event, call: bool) -> Verdict:
        target = self.target(fired)
        rules = ", ".join(f.rule for f in fired)
        evidence = "; ".join(f.evidence for f in fired)
        sid = self.record_.id

        def note(outcome: str) -> None:
            for f in fired:
                record.trigger(sid, self.level, f.rule, f.evidence, event.describe(), outcome, target)

        if levels.rank(target) <= levels.rank(self.level):
            note(f"allowed: the session already runs at {self.level}")
            return Verdict(ALLOW)
        mode = self.on_trigger
        if mode == "log":
            note("logged")
            return Verdict(ALLOW)
        what = _what_to_do(fired, sid, target)
        if mode == "escalate" and self.kept:
            problem = self._unavailable(target)
            if problem:
                note(f"denied: {target} is unavailable here")
                return self._deny(call, f"posture: {rules} fired ({evidence}). This call is refused: it needs {target}, which cannot run here: {problem}")
            self.latched = (f"posture: this session is moving to {target} because {rules} fired ({evidence}); "
                            f"nothing more runs at {self.level}; the conversation continues at {target}")
            note(f"escalating to {target}")
            self._escalate(target, f"live trigger {rules}: {evidence} ({event.describe()})")
            return Verdict(DENY, f"posture: {rules} fired ({evidence}). This call was refused, and this session moves to {target}; "
                                 f"the conversation continues there.")
        extra = " (escalate acts as deny in a `posture exec` session: nothing would carry the agent on)" if mode == "escalate" else ""
        note("denied" + extra)
        return self._deny(call, f"posture: {rules} fired ({evidence}). This call is refused at {self.level}{extra}. To go on: {what}.")

    def _deny(self, call: bool, reason: str) -> Verdict:
        if not call:  # a change to the project: refuse every further call until it is cleared
            self.latched = reason + " (every tool call is refused until this is resolved)"
        return Verdict(DENY, reason)

    def _unavailable(self, target: str) -> str:
        problems = []
        for backend in plugins.backends_for(target):
            avail = backend.availability(self.settings)
            if avail.ok:
                return ""
            problems.append(f"{backend.name}: {avail.reason}" + (f" (fix: {avail.fix})" if avail.fix else ""))
        return "; ".join(problems) or f"no backend for {target} is installed"

    def _escalate(self, target: str, reason: str) -> None:
        """Move the session up from a process of its own (the escalation stops this session's keeper)."""
        runtime = session_runtime_dir(self.record_.id)
        log = open(runtime / "escalate.log", "ab")
        try:
            subprocess.Popen([sys.executable, "-m", "posture.triggers.escalator", self.record_.id, target, reason],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                             env={**os.environ})
        finally:
            log.close()
