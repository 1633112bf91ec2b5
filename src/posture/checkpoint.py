"""Capture a project's work tree as a git commit under refs/posture/<session>/checkpoint-N.

It uses a temporary index, so HEAD, the index, the stash and the work tree stay exactly
as they were. Tracked changes, deletions and untracked files that are not ignored are
all captured. A project that is not in git gets a shadow repository in posture's state
dir, so its work is still safe in a ref.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import gitutil, paths, placeholders

AUTHOR = {
    "GIT_AUTHOR_NAME": "posture",
    "GIT_AUTHOR_EMAIL": "posture@localhost",
    "GIT_COMMITTER_NAME": "posture",
    "GIT_COMMITTER_EMAIL": "posture@localhost",
}


@dataclass(frozen=True)
class Checkpoint:
    """A captured work tree."""

    ref: str
    commit: str
    tree: str
    git_dir: str  # where the ref lives (the project's repo or its shadow)


def shadow_git_dir(project: Path) -> Path:
    """The shadow repository used for a project that is not in git."""
    return paths.state_dir() / "projects" / gitutil.project_key(project) / "shadow.git"


def _repo_args(project: Path) -> tuple[list[str], Path]:
    """Extra git arguments to address the project's repository, and that repository's git dir."""
    common = gitutil.common_dir(project)
    if common is not None:
        return [], gitutil.git_dir(project) or common
    shadow = shadow_git_dir(project)
    if not (shadow / "HEAD").exists():
        shadow.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        gitutil.git(project, "init", "--quiet", "--bare", str(shadow))
    return [f"--git-dir={shadow}", f"--work-tree={project}"], shadow


def _has_head(project: Path, args: list[str]) -> bool:
    return gitutil.git(project, *args, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False).returncode == 0


def list_checkpoints(project: Path, session: str) -> list[str]:
    """Refs of the checkpoints of `session`, oldest first."""
    args, _ = _repo_args(project)
    proc = gitutil.git(project, *args, "for-each-ref", "--format=%(refname)", f"refs/posture/{session}/", check=False)
    refs = [r for r in proc.stdout.decode().split() if "/checkpoint-" in r]
    return sorted(refs, key=lambda r: int(r.rsplit("-", 1)[1]))


def capture(project: Path, session: str, message: str = "") -> Checkpoint:
    """Commit the work tree of `project` to refs/posture/<session>/checkpoint-N and return it."""
    import tempfile  # here, not at the top: it loads `random`, and every posture call imports this module

    args, git_dir = _repo_args(project)
    scratch = Path(tempfile.mkdtemp(prefix="posture-ckpt-", dir=paths.ensure_private_dir(paths.state_dir() / "tmp")))
    try:
        index = scratch / "index"
        real_index = git_dir / "index"
        if real_index.exists():
            shutil.copyfile(real_index, index)  # keeps cached stat data: fast on big trees
        env = {**AUTHOR, "GIT_INDEX_FILE": str(index)}
        has_head = _has_head(project, args)
        if not real_index.exists() and has_head:
            gitutil.git(project, *args, "read-tree", "HEAD", env=env)
        # posture's own placeholders (empty stand-ins for protected paths while a session runs) are not the user's work
        skip = [f":(exclude,literal){os.path.relpath(p, project)}" for p in placeholders.held(project) if p.startswith(str(project) + "/")]
        gitutil.git(project, *args, "-c", "gc.auto=0", "add", "--all", "--", ".", *skip, env=env)
        tree = gitutil.out(project, *args, "write-tree", env=env)
        parents = ["-p", "HEAD"] if has_head else []
        n = len(list_checkpoints(project, session)) + 1
        text = message or f"posture checkpoint {n} of session {session}"
        commit = gitutil.out(project, *args, "commit-tree", tree, *parents, "-m", text, env=env)
        ref = f"refs/posture/{session}/checkpoint-{n}"
        gitutil.git(project, *args, "update-ref", ref, commit, "")
        return Checkpoint(ref=ref, commit=commit, tree=tree, git_dir=str(git_dir))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def restore_into(project: Path, ref: str, target: Path) -> None:
    """Write the tree of `ref` into the empty directory `target` (never touches the project's work tree)."""
    args, _ = _repo_args(project)
    target.mkdir(parents=True, exist_ok=True)
    env = {"GIT_INDEX_FILE": str(target.parent / f".{target.name}.index")}
    try:
        gitutil.git(project, *args, f"--work-tree={target}", "read-tree", ref, env=env)
        gitutil.git(project, *args, f"--work-tree={target}", "checkout-index", "--all", "--force", env=env)
    finally:
        try:
            os.unlink(env["GIT_INDEX_FILE"])
        except FileNotFoundError:
            pass
