"""`posture log`: a session's egress log (every destination allowed or refused, by the gateway or the kernel)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import UsageError
from .app import app, out


def _log_path(target: Optional[Path], session: Optional[str]) -> tuple[Path, Optional[str]]:
    """The log file to show and its session id (None for a file given by path)."""
    from .. import gitutil
    from ..gateway.egresslog import path_for
    from ..session import SessionStore, sessions_dir

    store = SessionStore()
    if session:
        store.get(session)  # exit 64 with a clear line when there is no such session
        return path_for(sessions_dir(), session), session
    if target is not None and target.is_file():
        return target, None
    project = str(gitutil.resolve_project(target))
    mine = [r for r in store.all() if r.project == project]
    if not mine:
        raise UsageError(f"no session of {project} has run yet", fix="start one with `posture up`, or name a log with --session ID")
    newest = mine[-1]
    return path_for(sessions_dir(), newest.id), newest.id


def _line(entry: dict[str, Any]) -> str:
    port = entry.get("port")
    dest = f"{entry.get('dest')}:{port}" if port is not None else str(entry.get("dest"))
    via = f" -> {entry['address']}" if entry.get("address") else ""
    count = f" x{entry['count']}" if (entry.get("count") or 1) > 1 else ""
    reason = f"  ({entry['reason']})" if entry.get("reason") else ""
    return f"{entry.get('time')}  {entry.get('decision', '?'):8} {dest}{via}{count}  rule {entry.get('rule')}  [{entry.get('source')}]{reason}"


def _live(session: Optional[str]) -> bool:
    from ..session import LIVE, SessionStore

    if session is None:
        return True
    from ..runner import refresh

    return refresh(SessionStore().get(session)).status in LIVE


@app.command("log")
def log(
    target: Optional[Path] = typer.Argument(None, help="A project (its newest session) or an egress log file (default: this project).",
                                             show_default=False),
    session: Optional[str] = typer.Option(None, "--session", help="The session whose log to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line (stable keys, documented in the README)."),
    follow: bool = typer.Option(False, "--follow", help="Keep printing new decisions until the session ends (or Ctrl-C)."),
) -> int:
    """Every destination a session's traffic asked for, allowed or refused, and by which rule."""
    path, sid = _log_path(target, session)
    offset = 0
    while True:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        complete = data[: data.rfind(b"\n") + 1]
        offset += len(complete)
        for raw in complete.splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            out(json.dumps(entry, separators=(",", ":")) if as_json else _line(entry))
        if not follow:
            return 0
        if not complete and not _live(sid):
            return 0
        time.sleep(0.2)
