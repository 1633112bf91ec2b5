"""Where triggers are written down: the audit log, and the session's egress log (JSON lines in the
session's state dir, outside every boundary; `posture log` prints it)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .. import audit
from ..session import sessions_dir


def egress_log_path(session_id: str) -> Path:
    """The session's egress log: every egress decision and every trigger, one JSON object per line."""
    return sessions_dir() / f"{session_id}.egress.jsonl"


def append(session_id: str, entry: dict[str, Any]) -> None:
    """Append one line to the session's egress log (O_APPEND: writers never interleave a line)."""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "session": session_id, **entry}, sort_keys=True)
    fd = os.open(egress_log_path(session_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def trigger(session_id: str, level: str, rule: str, evidence: str, event: str, outcome: str, target: str | None) -> None:
    """A trigger and what posture did about it, in both logs."""
    audit.record("trigger", session=session_id, level=level, rule=rule, evidence=evidence, call=event, outcome=outcome, target=target)
    append(session_id, {"source": "trigger", "level": level, "rule": rule, "evidence": evidence, "event": event,
                        "decision": outcome, "target": target})


def refused_message(session_id: str, level: str, why: str) -> None:
    """Something other than an event reached the report channel (it was refused)."""
    audit.record("trigger.refused_message", session=session_id, level=level, why=why)
    append(session_id, {"source": "trigger", "level": level, "rule": "report_channel", "evidence": why, "decision": "refused"})
