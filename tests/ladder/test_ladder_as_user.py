"""The whole ladder as the ordinary user posture-test (in the libvirt group, no sudo): a detached L2
session escalated to L3, then to L4, its work carried up each time; at L3 the files the guest writes
belong to the user on the host and `git commit` in the guest lands in the user's own repository.
The guest kernel is the one `posture setup --l3-kernel` fetched for every user (the L3 suite fetches it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ladder.asuser import AsUser
from ladder.conftest import Ladder

pytestmark = [pytest.mark.root, pytest.mark.l2, pytest.mark.l3, pytest.mark.l4]


def test_l2_to_l3_to_l4_as_the_user(ladder_env: Ladder, tmp_path: Path) -> None:
    me = AsUser(ladder_env, tmp_path, extra=["[l3]", f'uri = "{ladder_env.libvirt_uri}"', "boot_timeout = 90"])
    try:
        assert me.posture("l4", "enroll", "--yes").returncode == 0
        repo = me.project()
        up = me.posture("up", str(repo), "--level", "l2", "--profile", "shell", "--detach", "--", "sleep", "infinity", cwd=repo)
        assert up.returncode == 0, up.stderr
        low = up.stdout.strip().splitlines()[-1]
        assert me.posture("exec", "--session", low, "--", "sh", "-c", "echo from-l2 > work.txt").returncode == 0

        esc = me.posture("escalate", "--session", low, "--to", "l3", "--reason", "test", cwd=repo, timeout=400)
        assert esc.returncode == 0, esc.stdout + esc.stderr
        mid = _child(me, low, "l3")
        commit = me.posture("exec", "--session", mid, "--", "sh", "-c",
                            "id -u; echo from-l3 >> work.txt; git add work.txt && git commit -qm 'from l3' && echo committed", timeout=300)
        assert commit.returncode == 0 and commit.stdout.split() == [str(me.uid), "committed"], commit.stdout + commit.stderr
        assert (repo / "work.txt").stat().st_uid == me.uid  # the guest's file is the user's on the host
        log = subprocess.run(["git", "-c", f"safe.directory={repo}", "log", "--format=%s"], cwd=repo, capture_output=True, text=True)
        assert log.stdout.split("\n")[0] == "from l3", log.stdout  # in the user's own repository

        esc = me.posture("escalate", "--session", mid, "--to", "l4", "--reason", "test", cwd=repo, timeout=400)
        assert esc.returncode == 0, esc.stdout + esc.stderr
        high = _child(me, mid, "l4")
        seen = me.posture("exec", "--session", high, "--", "sh", "-c", "cat work.txt; echo $POSTURE_LEVEL; git log --format=%s")
        lines = seen.stdout.split("\n")
        assert seen.returncode == 0 and lines[:3] == ["from-l2", "from-l3", "l4"] and "from l3" in lines[3:], seen.stdout + seen.stderr
        assert me.posture("down", "--session", high).returncode == 0
    finally:
        me.cleanup()


def _child(me: AsUser, parent: str, level: str) -> str:
    sessions = {s["id"]: s for s in json.loads(me.posture("status", "--json").stdout)}
    assert sessions[parent]["status"] == "escalated", sessions[parent]
    kids = [s for s in sessions.values() if s["parent"] == parent]
    assert len(kids) == 1 and kids[0]["level"] == level and kids[0]["status"] == "running", kids
    return kids[0]["id"]

