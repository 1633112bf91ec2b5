"""The user's explicit trust in a project, and the per-project level ratchet."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import gitutil, levels
from ..jsonstore import JsonStore


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def trusted(project: Path) -> dict[str, Any] | None:
    """The trust record of `project` (from `posture trust`), or None."""
    return JsonStore("trust.json").read().get(gitutil.project_key(project))


def trust(project: Path) -> None:
    """Mark `project` trusted and clear its ratchet."""

    def change(doc: dict[str, Any]) -> None:
        doc[gitutil.project_key(project)] = {"project": str(project), "since": _now()}

    JsonStore("trust.json").change(change)
    clear_ratchet(project)


def untrust(project: Path) -> bool:
    """Withdraw trust; True when there was any."""
    return bool(JsonStore("trust.json").change(lambda doc: doc.pop(gitutil.project_key(project), None)))


def ratchet(project: Path) -> dict[str, Any] | None:
    """The project's ratchet ({"level", "since", "session"}) after an escalation, or None."""
    return JsonStore("ratchet.json").read().get(gitutil.project_key(project))


def raise_ratchet(project: Path, level: str, session: str) -> None:
    """New sessions of `project` start at least at `level` until the user says otherwise."""

    def change(doc: dict[str, Any]) -> None:
        key = gitutil.project_key(project)
        current = doc.get(key)
        if current is None or levels.rank(level) > levels.rank(current["level"]):
            doc[key] = {"project": str(project), "level": level, "since": _now(), "session": session}

    JsonStore("ratchet.json").change(change)


def clear_ratchet(project: Path) -> bool:
    """Drop the ratchet; True when there was one."""
    return bool(JsonStore("ratchet.json").change(lambda doc: doc.pop(gitutil.project_key(project), None)))
