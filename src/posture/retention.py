"""State that does not pile up: which sessions `status` shows, and which ended ones `gc` prunes.

A session has ended when its status is stopped, failed or escalated; it ended when its record
was last written (the write that recorded that status). `status` shows sessions that have not
ended (live, and dead ones whose keeper vanished: they need `posture down`) and those that ended
in the last 24 hours. Ended sessions older than `[sessions] retention_days` (default 14) are
pruned with their runtime dirs, automatically at most once a day (from `status` and `up`) and by
`posture gc`. Never pruned: a live or dead session, one whose keeper process is alive, one whose
work lives elsewhere (L4) and was not pulled since it ended, one whose runtime dir holds a mount.
Checkpoint refs in the project and the audit log are never touched.
"""

from __future__ import annotations

import calendar
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .errors import PostureError
from .session import DEAD, LIVE, SessionRecord, SessionStore, pid_alive

RECENT_SECONDS = 24 * 3600  # `status` shows sessions that ended this recently
AUTO_EVERY_SECONDS = 24 * 3600  # automatic pruning runs at most this often
STAMP = "gc.stamp"
_OCTAL = re.compile(r"\\([0-7]{3})")
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # what new_id() makes; never a path


@dataclass
class Verdict:
    """What `gc` does with one ended session past the retention period."""

    record: SessionRecord
    ended: float
    prune: bool
    reason: str = ""  # why it is kept


def _written(record: SessionRecord, store: SessionStore) -> float | None:
    try:
        return (store.root / f"{record.id}.json").stat().st_mtime
    except OSError:
        return None


def ended_at(record: SessionRecord, store: SessionStore) -> float | None:
    """When `record`'s session ended (epoch seconds), or None while it has not (live, or dead:
    its keeper vanished and `posture down` has yet to clean up)."""
    if record.status in LIVE or record.status == DEAD:
        return None
    return _written(record, store)


def visible(records: Iterable[SessionRecord], store: SessionStore, now: float | None = None) -> list[SessionRecord]:
    """The records `status` shows without --all: not ended, or ended in the last 24 hours."""
    now = time.time() if now is None else now
    shown = []
    for record in records:
        ended = ended_at(record, store)
        if ended is None or now - ended < RECENT_SECONDS:
            shown.append(record)
    return shown


def retention_days() -> int:
    """`[sessions] retention_days` from the user's config (a bad config raises ConfigError)."""
    from . import plugins
    from .config import RETENTION_DAYS, load_user_config

    return load_user_config(plugins.config_extensions()).get("sessions", {}).get("retention_days", RETENTION_DAYS)


# ---------------------------------------------------------------- what keeps a session

def _pull_times() -> dict[str, float]:
    """The time of each session's latest `posture pull`, from the audit log."""
    from . import audit

    latest: dict[str, float] = {}
    for rec in audit.read():
        if rec.get("event") == "l4.pull":
            session = str((rec.get("data") or {}).get("session"))
            try:
                when = float(calendar.timegm(time.strptime(rec["time"], "%Y-%m-%dT%H:%M:%SZ")))
            except (KeyError, TypeError, ValueError):
                continue
            latest[session] = max(latest.get(session, 0.0), when)
    return latest


def _has_pull_ref(project: Path, session_id: str) -> bool:
    """True when refs/posture/<id>/pull-N exists in the project's repo (or its shadow); read-only."""
    from . import gitutil
    from .checkpoint import shadow_git_dir

    if not project.is_dir():
        return False
    args: list[str] = []
    if gitutil.common_dir(project) is None:
        shadow = shadow_git_dir(project)
        if not (shadow / "HEAD").exists():
            return False
        args = [f"--git-dir={shadow}"]
    proc = gitutil.git(project, *args, "for-each-ref", "--format=%(refname)", f"refs/posture/{session_id}/", check=False)
    return proc.returncode == 0 and any("/pull-" in ref for ref in proc.stdout.decode().split())


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` in this mount namespace."""
    found = []
    prefix = str(root).rstrip("/") + "/"
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4:
                    point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
                    if point == str(root) or point.startswith(prefix):
                        found.append(point)
    except OSError:
        return [str(root)]  # cannot tell: keep it
    return found


def runtime_dir_of(session_id: str) -> Path:
    """The session's runtime dir (not created)."""
    return paths.runtime_dir() / session_id


class _Judge:
    """Decides, for ended sessions past the retention period, which may go."""

    def __init__(self) -> None:
        from . import plugins

        self.remote = {b.name: b.remote_work for b in plugins.backends()}
        self._pulls: dict[str, float] | None = None

    def pulls(self) -> dict[str, float]:
        if self._pulls is None:
            self._pulls = _pull_times()
        return self._pulls

    def keeps(self, record: SessionRecord, ended: float) -> str:
        """Why `record` must be kept, or '' when it may be pruned."""
        if not _SESSION_ID.fullmatch(record.id):
            return "its id is not a session id; remove it by hand"
        if record.status in LIVE:
            return f"it is {record.status}"
        if record.status == DEAD:
            return f"its keeper died without cleaning up; `posture down --session {record.id}` first"
        if pid_alive(record.keeper_pid):
            return f"its keeper process {record.keeper_pid} is still running"
        remote = self.remote.get(record.backend)
        if remote is None:
            return f"its backend {record.backend!r} is not installed, so where its work lives is unknown"
        if remote and (record.checkpoints or record.data.get("bare")):
            pulled = self.pulls().get(record.id)
            if pulled is None or pulled < int(ended) or not _has_pull_ref(Path(record.project), record.id):
                return f"its work on the {record.level} host was not pulled since it ended; `posture pull --session {record.id}`"
        mounts = _mounts_under(runtime_dir_of(record.id))
        if mounts:
            return f"its runtime dir holds a mount ({mounts[0]})"
        return ""


# ---------------------------------------------------------------- pruning

def _remove(store: SessionStore, record: SessionRecord, judge: _Judge) -> str:
    """Remove one session's runtime dir and record, re-checked under its lock; '' or why not."""
    from .session import _locked

    path = store.root / f"{record.id}.json"
    with _locked(path):
        try:
            fresh = store.get(record.id)
        except PostureError:
            return "it is gone already"
        ended = ended_at(fresh, store)
        why = "it was reopened" if ended is None else judge.keeps(fresh, ended)
        if why:
            return why
        runtime = runtime_dir_of(record.id)
        try:
            if runtime.is_dir() and not runtime.is_symlink():
                shutil.rmtree(runtime)
        except OSError as exc:
            return f"its runtime dir could not be removed: {exc.strerror or exc}"
        path.unlink(missing_ok=True)
    path.with_suffix(".lock").unlink(missing_ok=True)
    return ""


def prune(dry_run: bool = False, now: float | None = None, days: int | None = None, auto: bool = False) -> list[Verdict]:
    """Prune ended sessions older than the retention period (or say what would go, `dry_run`);
    return a verdict for each one past it. Audited unless nothing was removed."""
    now = time.time() if now is None else now
    days = retention_days() if days is None else days
    store = SessionStore()
    judge = _Judge()
    verdicts = []
    for record in store.all():
        ended = None if record.status in LIVE else _written(record, store)  # a dead one is reported, never pruned
        if ended is None or now - ended < days * 86400:
            continue
        why = judge.keeps(record, ended)
        if not why and not dry_run:
            why = _remove(store, record, judge)
        verdicts.append(Verdict(record, ended, prune=not why, reason=why))
    _touch_stamp(now)
    removed = [v.record.id for v in verdicts if v.prune]
    if removed and not dry_run:
        from . import audit

        audit.record("sessions.gc", removed=removed, retention_days=days, auto=auto)
    return verdicts


def _stamp() -> Path:
    return paths.state_dir() / STAMP


def _touch_stamp(now: float) -> None:
    stamp = _stamp()
    paths.ensure_private_dir(stamp.parent)
    stamp.touch(mode=0o600)
    os.utime(stamp, (now, now))


def maybe_prune(now: float | None = None) -> None:
    """Prune as `gc` does when the last pruning was a day ago or more. Cheap when it is not due (one
    stat); never raises: a bad config or a busy lock means no pruning this time."""
    now = time.time() if now is None else now
    try:
        if now - _stamp().stat().st_mtime < AUTO_EVERY_SECONDS:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    try:
        paths.ensure_private_dir(paths.state_dir())
        fd = os.open(paths.state_dir() / "gc.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _stamp().exists() or now - _stamp().stat().st_mtime >= AUTO_EVERY_SECONDS:  # not done meanwhile
            prune(now=now, auto=True)
    except (OSError, PostureError):
        return
    finally:
        os.close(fd)
