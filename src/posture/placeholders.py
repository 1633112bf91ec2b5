"""Placeholders for protected project paths that do not exist yet.

A bind mount needs a mount point, so to make a missing `.envrc` or `.vscode/` read-only
inside a sandbox, an empty file or directory is created in the project on the host for
the session's lifetime and bound read-only over itself. posture removes what it created
when the last session of the project that uses it ends, and only if it is still the
same, still empty file or directory (anything the user put there stays).

A registry (a JSON file next to the project's agent state, under a lock) counts the
sessions using each placeholder: removing a file that is a mount point in a running
sandbox would silently detach that mount there.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


# Protected names that are directories when they exist; everything else is a file.
DIR_NAMES = frozenset({".git", "hooks", "info", ".vscode", ".idea", ".cursor", ".claude", "commands", "agents", ".github", ".devcontainer"})


@contextmanager
def _locked(registry: str) -> Iterator[tuple[Path, dict]]:
    path = Path(registry)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        yield path, data
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)
    finally:
        os.close(fd)


def mount_point(project: str, protected: str) -> tuple[str, bool]:
    """Where to bind for `protected`: itself if it exists, else its highest missing ancestor.

    Returns (path, is_dir) for a missing one; (protected, False) when it exists.
    """
    p = Path(protected)
    if os.path.lexists(p):
        return str(p), p.is_dir()
    top = p
    root = Path(project)
    while top.parent != root and not os.path.lexists(top.parent) and root in top.parents:
        top = top.parent
    is_dir = top != p or top.name in DIR_NAMES
    return str(top), is_dir


def acquire(registry: str, session: str, wanted: list[tuple[str, bool]]) -> list[str]:
    """Create the missing placeholders in `wanted` ([(path, is_dir)]) for `session`; return every path now held."""
    held: list[str] = []
    with _locked(registry) as (_path, data):
        for path, is_dir in wanted:
            entry = data.get(path)
            if entry is None or not _same(path, entry):
                if os.path.lexists(path):
                    continue  # it exists and is not ours: a real file, protected as it is
                if is_dir:
                    os.mkdir(path, 0o755)
                else:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    os.close(fd)
                st = os.lstat(path)
                entry = {"ino": st.st_ino, "dev": st.st_dev, "dir": is_dir, "sessions": []}
                data[path] = entry
            if session not in entry["sessions"]:
                entry["sessions"].append(session)
            held.append(path)
    return held


def _same(path: str, entry: dict) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_ino == entry["ino"] and st.st_dev == entry["dev"]


def _empty(path: str, is_dir: bool) -> bool:
    try:
        if is_dir:
            return not os.listdir(path)
        return os.lstat(path).st_size == 0
    except OSError:
        return False


def release(registry: str, session: str, live: Callable[[], set[str]] | None = None) -> list[str]:
    """Drop `session`'s hold; remove placeholders nobody holds.

    `live()` names the sessions still running; it is asked only when other holders remain
    (holders that are not live, e.g. crashed sessions, count as gone).
    """
    removed: list[str] = []
    running: set[str] | None = None
    with _locked(registry) as (_path, data):
        for path in sorted(data, key=len, reverse=True):
            entry = data[path]
            entry["sessions"] = [s for s in entry["sessions"] if s != session]
            if entry["sessions"] and live is not None:
                if running is None:
                    try:
                        running = live()
                    except Exception:  # noqa: BLE001 - without the store, keep the other holders
                        running = set(entry["sessions"])
                entry["sessions"] = [s for s in entry["sessions"] if s in running]
            if entry["sessions"]:
                continue
            if _same(path, entry) and _empty(path, entry["dir"]):
                try:
                    os.rmdir(path) if entry["dir"] else os.unlink(path)
                    removed.append(path)
                except OSError:
                    continue  # still a mount point somewhere, or no longer ours: keep the entry
            del data[path]
    return removed


def registry_for(project: Path) -> str:
    """The placeholder registry of `project` (next to its agent state)."""
    from . import gitutil, paths

    return str(paths.state_dir() / "projects" / gitutil.project_key(project) / "placeholders.json")


def held(project: Path) -> list[str]:
    """Placeholders posture holds in `project` right now: still the same, still empty (absolute paths)."""
    path = Path(registry_for(project))
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return sorted(p for p, entry in data.items() if _same(p, entry) and _empty(p, entry["dir"]))
