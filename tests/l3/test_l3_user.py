"""L3 as the ordinary user: ownership of what the guest writes, git in the user's repository,
what guest root cannot leave on the host, two users at once, and the network helper's checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from l3env import L3

pytestmark = [pytest.mark.root, pytest.mark.l3]


def _exec(l3: L3, project: Path, script: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return l3.posture("exec", str(project), "--level", "l3", "--profile", "shell", "--", "sh", "-c", script, cwd=project, **extra)


def test_guest_writes_belong_to_the_user_and_git_commits(l3: L3) -> None:
    """The agent's commands run as the user's uid and home; files and commits land as the user's own."""
    project = l3.make_project("owner")
    proc = _exec(l3, project, "id -u; id -g; echo $HOME; echo made > made.txt; mkdir sub && echo x > sub/y; "
                              "git add made.txt sub && git commit -qm 'from the guest' && echo committed")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.split()
    assert lines[:3] == [str(l3.uid), str(l3.gid), str(l3.home)], proc.stdout
    assert lines[-1] == "committed", proc.stdout + proc.stderr
    for rel in ("made.txt", "sub", "sub/y"):
        st = os.stat(project / rel)
        assert (st.st_uid, st.st_gid) == (l3.uid, l3.gid), (rel, st.st_uid, st.st_gid)
    log = l3.run_as("git", "log", "--format=%s %an", "-1", cwd=project)
    assert log.stdout.strip() == "from the guest Posture Test", log
    objects = [p for p in (project / ".git" / "objects").rglob("*") if p.is_file()]
    assert objects and all(p.stat().st_uid == l3.uid for p in objects)
    assert l3.domains() == []
