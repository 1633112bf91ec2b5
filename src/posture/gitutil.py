"""Small, safe wrappers around the git CLI.

Every call runs with hooks, fsmonitor and the user's global/system config neutralised
where they could run code, since the repository may have been written by a stranger.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path

from .errors import UsageError

# Config that makes git run programs; forced off for every call posture makes.
SAFE_CONFIG = (
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.sshCommand=false",
    "protocol.ext.allow=never",
)


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for git: no prompts, no pager, no editor, plus `extra`."""
    env = dict(os.environ)
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "GIT_EDITOR": "false", "LC_ALL": "C"})
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    env.pop("GIT_INDEX_FILE", None)
    if extra:
        env.update(extra)
    return env


def git(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `git args` in `cwd` with code-running config disabled; raise on failure when `check`."""
    argv = ["git"]
    for item in SAFE_CONFIG:
        argv += ["-c", item]
    argv += list(args)
    proc = subprocess.run(argv, cwd=cwd, env=git_env(env), capture_output=True, input=input)
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode, proc.stderr.decode(errors="replace").strip())
    return proc


def out(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """stdout of a git command, stripped."""
    return git(cwd, *args, env=env).stdout.decode(errors="replace").strip()


class GitError(RuntimeError):
    """A git command failed."""

    def __init__(self, args: tuple[str, ...], code: int, stderr: str) -> None:
        self.code, self.stderr = code, stderr
        super().__init__(f"git {' '.join(args)} failed ({code}): {stderr.splitlines()[-1] if stderr else ''}")


def toplevel(path: Path) -> Path | None:
    """The work tree's top level containing `path`, or None outside git."""
    proc = git(path, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        return None
    return Path(proc.stdout.decode().strip())


def common_dir(project: Path) -> Path | None:
    """The git common dir (shared by all worktrees) of `project`, or None outside git."""
    return _common_dir(str(project))


@functools.lru_cache(maxsize=64)
def _common_dir(project: str) -> Path | None:
    proc = git(project, "rev-parse", "--path-format=absolute", "--git-common-dir", check=False)
    if proc.returncode != 0:
        return None
    return Path(proc.stdout.decode().strip()).resolve()


def git_dir(project: Path) -> Path | None:
    """This worktree's own git dir, or None outside git."""
    return _git_dir(str(project))


@functools.lru_cache(maxsize=64)
def _git_dir(project: str) -> Path | None:
    proc = git(project, "rev-parse", "--path-format=absolute", "--git-dir", check=False)
    if proc.returncode != 0:
        return None
    return Path(proc.stdout.decode().strip()).resolve()


def resolve_project(path: Path | None) -> Path:
    """The project for PATH: its git top level, or the directory itself when not in git."""
    start = (path or Path.cwd()).expanduser()
    if not start.exists():
        raise UsageError(f"{start}: no such directory", fix="give the path of a project directory")
    if not start.is_dir():
        raise UsageError(f"{start}: not a directory", fix="give the path of a project directory")
    start = start.resolve()
    return toplevel(start) or start


def project_key(project: Path) -> str:
    """Stable key for a project: its git common dir (worktrees share it), else its path."""
    anchor = common_dir(project) or project.resolve()
    return hashlib.sha256(str(anchor).encode()).hexdigest()[:16]
