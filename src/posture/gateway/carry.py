"""A session's sentinels, kept outside the boundary so that an escalation carries them.

`sentinels.json` (0600) in the session's private runtime dir holds {name: sentinel} and what the
session was given (names, hosts, sources: never a real value). `posture escalate` copies the lower
session's file to the higher one's runtime dir before it starts, and the broker there reuses each
sentinel it names: an agent that cached its sentinel keeps working after the move. The real values
are fetched afresh by the new session (a sentinel is worthless without its session's gateway).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILE = "sentinels.json"


def save(runtime: Path, sentinels: dict[str, str], given: list[dict[str, Any]]) -> None:
    """Keep a session's sentinels (by name) and what it was given in `runtime` (atomically, 0600)."""
    _write(runtime / FILE, {"sentinels": dict(sentinels), "given": given})


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def _read(runtime: Path) -> dict[str, Any]:
    try:
        doc = json.loads((runtime / FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def load(runtime: Path) -> dict[str, str]:
    """The sentinels kept in `runtime`, by name ({} when there are none)."""
    found = _read(runtime).get("sentinels")
    if not isinstance(found, dict):
        return {}
    return {str(k): v for k, v in found.items() if isinstance(v, str) and v}


def given(runtime: Path) -> list[dict[str, Any]]:
    """Names, hosts and sources of what the session in `runtime` was given (for the audit log)."""
    found = _read(runtime).get("given")
    return [g for g in found if isinstance(g, dict)] if isinstance(found, list) else []


def hand_over(lower: Path, higher: Path) -> list[str]:
    """Copy the lower session's sentinels to the higher session's runtime dir; return their names."""
    kept = load(lower)
    if kept:
        _write(higher / FILE, {"sentinels": kept, "given": []})
    return sorted(kept)
