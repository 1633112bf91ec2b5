"""Where triggers are written down: the audit log, and the session's egress log (gateway/egresslog.py:
the same file and keys as every egress decision, `"source": "trigger"`; `posture log` prints it).

A trigger's line: `dest` is the tool call (or the project change) that fired it, `decision` is
allowed or refused, `rule` the rule's name, `reason` its evidence; `outcome` (what posture did:
denied, logged, escalating to l4, ...) and `target` (the level the rules now give) are added.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import audit
from ..gateway import egresslog
from ..session import sessions_dir


def egress_log_path(session_id: str) -> Path:
    """The session's egress log."""
    return egresslog.path_for(sessions_dir(), session_id)


def append(session_id: str, level: str, rule: str, dest: str, decision: str, reason: str, **extra: Any) -> None:
    """Append one trigger line to the session's egress log (one write: lines never interleave)."""
    line = {"time": egresslog.now(), "session": session_id, "level": level, "dest": dest, "port": None, "address": None,
            "decision": decision, "rule": rule, "source": "trigger", "reason": reason, "count": 1, **extra}
    fd = os.open(egress_log_path(session_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
    finally:
        os.close(fd)


def trigger(session_id: str, level: str, rule: str, evidence: str, event: str, outcome: str, target: str | None) -> None:
    """A trigger and what posture did about it, in both logs."""
    audit.record("trigger", session=session_id, level=level, rule=rule, evidence=evidence, call=event, outcome=outcome, target=target)
    decision = "allowed" if outcome.startswith(("allowed", "logged")) else "refused"
    append(session_id, level, rule, event, decision, evidence, outcome=outcome, target=target)


def refused_message(session_id: str, level: str, why: str) -> None:
    """Something other than a tool-call report reached the report channel (it was refused)."""
    audit.record("trigger.refused_message", session=session_id, level=level, why=why)
    append(session_id, level, "report_channel", "report channel", "refused", why, outcome="refused")
