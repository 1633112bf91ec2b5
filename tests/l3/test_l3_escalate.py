"""Escalating a running L2 session to L3: the work moves up into a VM, the L2 session ends."""

from __future__ import annotations

import json

import pytest
from l3env import L3, wait_for

pytestmark = [pytest.mark.root, pytest.mark.l3]


def test_escalate_l2_to_l3(l3: L3) -> None:
    project = l3.make_project("escalate")
    up = l3.posture("up", str(project), "--level", "l2", "--profile", "shell", "--detach", "--", "sleep", "infinity", cwd=project)
    assert up.returncode == 0, up.stderr
    live = [s for s in json.loads(l3.posture("status", "--json").stdout) if s["project"] == str(project) and s["status"] == "running"]
    assert len(live) == 1 and live[0]["level"] == "l2", live
    low = live[0]["id"]
    wrote = l3.posture("exec", "--session", low, "--", "sh", "-c", "echo from-l2 > work.txt")
    assert wrote.returncode == 0, wrote.stderr
    esc = l3.posture("escalate", "--session", low, "--to", "l3", "--reason", "test", cwd=project)
    assert esc.returncode == 0, esc.stdout + esc.stderr
    listed = {s["id"]: s for s in json.loads(l3.posture("status", "--json").stdout) if s["project"] == str(project)}
    assert listed[low]["status"] == "escalated", listed[low]
    high = [s for s in listed.values() if s["parent"] == low]
    assert len(high) == 1 and high[0]["level"] == "l3" and high[0]["status"] == "running", high
    seen = l3.posture("exec", "--session", high[0]["id"], "--", "sh", "-c", "cat work.txt; echo $POSTURE_LEVEL")
    assert seen.returncode == 0 and seen.stdout.split() == ["from-l2", "l3"], seen.stdout + seen.stderr
    assert l3.posture("down", "--session", high[0]["id"]).returncode == 0
    assert wait_for(lambda: l3.domains() == [], 30), l3.domains()
