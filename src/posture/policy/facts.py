"""Facts about a project that the trigger rules judge: remotes, authors, MCP servers, intent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import gitutil
from . import mcp, trust
from .remotes import Remote, project_remotes

if TYPE_CHECKING:
    import subprocess

AUTHOR_SCAN_LIMIT = 200_000  # commits; beyond this the scan stops and says so


@dataclass
class Facts:
    """What posture knows about a project and the task at hand."""

    project: Path
    is_git: bool
    remotes: list[Remote] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    commits: int = 0
    authors_truncated: bool = False
    mcp: mcp.Discovery = field(default_factory=mcp.Discovery)
    trust: dict[str, Any] | None = None
    intent_push: bool = False
    untrusted_input: bool = False


def _start_authors(project: Path) -> subprocess.Popen[bytes]:
    # posture's own refs (checkpoints, work pulled back for review) are not the project's history
    return gitutil.start(project, "log", "--exclude=refs/posture/*", "--all", f"--max-count={AUTHOR_SCAN_LIMIT}", "--format=%ae")


def _authors(project: Path, started: subprocess.Popen[bytes] | None = None) -> tuple[list[str], int, bool]:
    proc = gitutil.finish(started if started is not None else _start_authors(project))
    if proc.returncode != 0:
        return [], 0, False
    lines = proc.stdout.decode(errors="replace").splitlines()
    return sorted({line.strip().lower() for line in lines if line.strip()}), len(lines), len(lines) >= AUTHOR_SCAN_LIMIT


def gather(project: Path, *, intent_push: bool = False, untrusted_input: bool = False) -> Facts:
    """Collect the facts for `project` (declared intent comes from the CLI and the repo file)."""
    is_git = gitutil.common_dir(project) is not None
    facts = Facts(project=project, is_git=is_git, intent_push=intent_push, untrusted_input=untrusted_input)
    if is_git:
        log = _start_authors(project)  # runs while the remotes are read
        try:
            facts.remotes = project_remotes(project)
        except BaseException:
            log.kill()
            log.wait()
            raise
        facts.authors, facts.commits, facts.authors_truncated = _authors(project, log)
    facts.mcp = mcp.discover(project)
    facts.trust = trust.trusted(project)
    return facts
