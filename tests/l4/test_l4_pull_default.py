"""`posture pull` without --session: the current project's newest L4 session, running or stopped."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.l4


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_pull_without_session_takes_the_projects_newest_l4_session(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo(files={"sub/keep.txt": "k\n"})
    other = make_repo(name="other")
    assert l4.posture("exec", "--level", "l4", "--", "sh", "-c", "echo old > old.txt", cwd=repo).returncode == 0
    older = l4.sessions()[-1]["id"]
    assert l4.posture("exec", "--level", "l4", "--", "sh", "-c", "echo elsewhere > other.txt", cwd=other).returncode == 0
    up = l4.posture("up", "--level", "l4", "--detach", "--", "sh", "-c", "echo new > new.txt; exec sleep 600", cwd=repo)
    assert up.returncode == 0, up.stderr
    newest = up.stdout.strip()
    for _ in range(50):  # the agent writes its file right after it starts
        if l4.posture("exec", "--session", newest, "--", "test", "-e", "new.txt").returncode == 0:
            break
        time.sleep(0.2)

    # running: from a subdirectory of the project, no --session
    got = l4.posture("pull", cwd=repo / "sub")
    assert got.returncode == 0, got.stderr
    ref = f"refs/posture/{newest}/pull-1"
    assert got.stdout.splitlines()[0] == ref and "new.txt" in got.stdout
    assert git(repo, "show", f"{ref}:new.txt") == "new"
    assert not (repo / "new.txt").exists()  # never checked out
    assert git(repo, "for-each-ref", f"refs/posture/{older}/") .count("pull-") == 0  # the older session was not pulled

    # stopped: still the newest; nothing new since the last pull
    assert l4.posture("down", "--session", newest).returncode == 0
    again = l4.posture("pull", cwd=repo)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == ref and "nothing new" in again.stderr

    # a project without any L4 session: a usage error that says how to name one
    lone = make_repo(name="lone")
    none = l4.posture("pull", cwd=lone)
    assert none.returncode == 64 and "no L4 session" in none.stderr and "--session" in none.stderr
