"""Fast start from a spare work tree: a stopped session's tree is reused by the next session of
the project, which sees exactly its own checkpoint (no leftovers, ignored files included), the
stopped session's work still comes back with pull, and two live sessions never share a tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.l4

# Inside a session: every file of the work tree with its content hash, .git excluded.
TREE = r"""find . -path ./.git -prune -o \( -type f -o -type l \) -print0 | sort -z | xargs -0 sha256sum; find . -path ./.git -prune -o -type d -print | sort"""

# The first session's agent leaves every kind of leftover behind.
MESS = r"""
set -e
echo edited >> tracked.txt
rm gone.txt
echo untracked > untracked.txt
mkdir -p build/deep && echo artefact > build/deep/out.o
echo secret > .env.local
rm dir_to_file.txt && mkdir dir_to_file.txt && echo inside > dir_to_file.txt/x
mkdir -p nested && (cd nested && git init -q && echo n > n.txt && git add n.txt && git -c user.name=a -c user.email=a@b commit -qm n)
mkdir -p empty/dir
git checkout -q -b agent-branch
git add -A . && git -c user.name=a -c user.email=a@b commit -qm "agent work"
echo after-commit > after.txt
"""


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def local_tree(repo: Path) -> str:
    return subprocess.run(["sh", "-c", TREE], cwd=repo, capture_output=True, text=True, check=True).stdout


def record(l4, sid: str) -> dict:
    return json.loads((l4.state / "sessions" / f"{sid}.json").read_text())


def newest(l4) -> str:
    return [s["id"] for s in l4.sessions() if s["backend"] == "tailnet"][-1]


def test_spare_tree_is_reused_exactly_and_work_still_comes_back(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo(files={"tracked.txt": "t\n", "gone.txt": "g\n", "dir_to_file.txt": "f\n", ".gitignore": "build/\n.env*\n"})
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")

    first = l4.posture("exec", "--level", "l4", "--", "sh", "-c", MESS, cwd=repo)
    assert first.returncode == 0, first.stderr
    sid1 = newest(l4)
    assert record(l4, sid1)["data"]["tree_reused"] is False
    spare = l4.vps.home / l4.workdir / "spare"
    assert len(list(spare.glob("*/*"))) == 1, "the stopped session's tree waits as the project's spare"

    (repo / "tracked.txt").write_text("t\nlocal one-file change\n")
    second = l4.posture("exec", "--level", "l4", "--", "sh", "-c", TREE + "; git status --porcelain --ignored; git rev-parse HEAD; git symbolic-ref -q HEAD || echo detached", cwd=repo)
    assert second.returncode == 0, second.stderr
    sid2 = newest(l4)
    data = record(l4, sid2)["data"]
    assert data["tree_reused"] is True and data["tree"] == record(l4, sid1)["data"]["tree"]
    # exactly the checkpoint: no leftover of the first agent (untracked, ignored, nested repo, empty dirs), clean status, detached at the checkpoint
    out = second.stdout
    expected = local_tree(repo) + data["checkpoint_commit"] + "\ndetached\n"
    assert out == expected, (out, expected)

    # the first session's work was captured before its tree was reused, and comes back with pull
    pulled = l4.posture("pull", "--session", sid1, cwd=repo)
    assert pulled.returncode == 0, pulled.stderr
    ref = f"refs/posture/{sid1}/pull-1"
    assert git(repo, "show", f"{ref}:after.txt") == "after-commit"
    assert git(repo, "show", f"{ref}:dir_to_file.txt/x") == "inside"
    assert "agent work" in git(repo, "log", "--format=%s", ref)
    # reusing the tree did not move the branch the first agent made in the host's repository
    bare = next((l4.vps.home / l4.workdir / "repos").iterdir())
    agent_branch = subprocess.run(["git", "--git-dir", str(bare), "log", "-1", "--format=%s", "refs/heads/agent-branch"], capture_output=True, text=True).stdout.strip()
    assert agent_branch == "agent work"


def test_concurrent_sessions_never_share_a_tree(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo()
    assert l4.posture("exec", "--level", "l4", "--", "true", cwd=repo).returncode == 0  # leaves one spare
    ids = []
    for _ in range(2):
        proc = l4.posture("up", "--level", "l4", "--detach", "--", "sleep", "600", cwd=repo)
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.strip())
    a, b = (record(l4, sid)["data"] for sid in ids)
    assert [a["tree_reused"], b["tree_reused"]] == [True, False]
    assert a["worktree"] != b["worktree"] and a["tree"] != b["tree"]
    assert l4.posture("exec", "--session", ids[0], "--", "sh", "-c", "echo a > mine.txt").returncode == 0
    assert l4.posture("exec", "--session", ids[1], "--", "test", "!", "-e", "mine.txt").returncode == 0
    # a stopped session whose process is still running in its tree does not hand the tree on
    proc = l4.posture("exec", "--session", ids[0], "--", "sh", "-c", "setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $!")
    assert proc.returncode == 0, proc.stderr
    lingering = int(proc.stdout.strip())
    for sid in ids:
        assert l4.posture("down", "--session", sid).returncode == 0
    spares = list((l4.vps.home / l4.workdir / "spare").glob("*/*"))
    assert [p.name for p in spares] == [b["tree"]], spares
    assert not Path(a["worktree"]).exists()
    os.kill(lingering, signal.SIGKILL)
