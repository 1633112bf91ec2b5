"""Small, safe wrappers around the git CLI.

Every call runs with hooks, fsmonitor and the user's global/system config neutralised
where they could run code, since the repository may have been written by a stranger.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from .digest import sha256
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


def _argv(args: tuple[str, ...]) -> list[str]:
    argv = ["git"]
    for item in SAFE_CONFIG:
        argv += ["-c", item]
    return argv + list(args)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `git args` in `cwd` with code-running config disabled; raise on failure when `check`."""
    proc = subprocess.run(_argv(args), cwd=cwd, env=git_env(env), capture_output=True, input=input)
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode, proc.stderr.decode(errors="replace").strip())
    return proc


def start(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start `git args` in `cwd` like `git` does, without waiting: collect it with `finish`."""
    return subprocess.Popen(_argv(args), cwd=cwd, env=git_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[bytes]:
    """Wait for a git started with `start`; the same result `git(..., check=False)` gives."""
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


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


# (kind, project) -> answer, filled by resolve_project's one combined rev-parse for the
# top level it found; the lru caches below answer everything else.
_primed: dict[tuple[str, str], Path | None] = {}


def common_dir(project: Path) -> Path | None:
    """The git common dir (shared by all worktrees) of `project`, or None outside git."""
    key = ("common", str(project))
    return _primed[key] if key in _primed else _common_dir(str(project))


@functools.lru_cache(maxsize=64)
def _common_dir(project: str) -> Path | None:
    proc = git(Path(project), "rev-parse", "--path-format=absolute", "--git-common-dir", check=False)
    if proc.returncode != 0:
        return None
    return Path(proc.stdout.decode().strip()).resolve()


def git_dir(project: Path) -> Path | None:
    """This worktree's own git dir, or None outside git."""
    key = ("git", str(project))
    return _primed[key] if key in _primed else _git_dir(str(project))


@functools.lru_cache(maxsize=64)
def _git_dir(project: str) -> Path | None:
    proc = git(Path(project), "rev-parse", "--path-format=absolute", "--git-dir", check=False)
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
    # One git call for what `toplevel`, `common_dir` and `git_dir` would ask separately (each
    # spawn costs a few ms on the agent's hot path); anything unusual (inside a .git dir, a
    # bare repository, not git at all, a path with a newline or edge blanks) falls back to the separate calls.
    proc = git(start, "rev-parse", "--path-format=absolute", "--show-toplevel", "--git-common-dir", "--git-dir", check=False)
    lines = proc.stdout.decode().split("\n")
    if proc.returncode == 0 and len(lines) == 4 and lines[3] == "" and all(line and line == line.strip() for line in lines[:3]):
        top = Path(lines[0])
        _primed[("common", str(top))] = Path(lines[1]).resolve()
        _primed[("git", str(top))] = Path(lines[2]).resolve()
        return top
    return toplevel(start) or start


def project_key(project: Path) -> str:
    """Stable key for a project: its git common dir (worktrees share it), else its path."""
    anchor = common_dir(project) or project.resolve()
    return sha256(str(anchor).encode()).hexdigest()[:16]
