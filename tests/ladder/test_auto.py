"""`--level auto` (the default) end to end: the level `explain` gives is the level that runs,
one line says which and why, and an explicit lower --level is honoured only as a logged override."""

from __future__ import annotations

import json

import pytest

from ladder.conftest import Ladder

pytestmark = [pytest.mark.root, pytest.mark.l2, pytest.mark.l4]


def test_auto_runs_what_explain_says(ladder: Ladder, make_repo) -> None:
    mine = make_repo(authors=["me@example.com"])
    stranger = make_repo(remotes={"origin": "https://github.com/stranger/tool"})
    for repo, level in ((mine, "l2"), (stranger, "l4")):
        assert json.loads(ladder.ok("explain", str(repo), "--json"))["level"] == level
        assert ladder.ok("exec", str(repo), "--", "sh", "-c", "echo $POSTURE_LEVEL").strip() == level
    up = ladder.posture("up", str(stranger), "--detach", "--", "sleep", "1000")
    assert up.returncode == 0, up.stderr
    assert "posture: l4: untrusted_repo: remote not in trusted_remotes" in up.stderr
    sid = up.stdout.strip().splitlines()[-1]
    assert ladder.sessions()[sid]["level"] == "l4"


def test_explicit_lower_level_is_a_logged_override(ladder: Ladder, make_repo) -> None:
    stranger = make_repo(remotes={"origin": "https://github.com/stranger/tool"})
    proc = ladder.posture("exec", str(stranger), "--level", "l2", "--", "sh", "-c", "echo $POSTURE_LEVEL")
    assert proc.returncode == 0 and proc.stdout.strip() == "l2"
    assert "WARNING: --level l2 below l4 from the rules" in proc.stderr
    assert ladder.user is not None
    decisions = [json.loads(x) for x in (ladder.user.state / "audit.log").read_text().splitlines()]
    assert any(d["event"] == "decision" and d["data"].get("override") for d in decisions)


def test_auto_never_falls_back_when_the_level_is_unavailable(ladder: Ladder, make_repo) -> None:
    stranger = make_repo(remotes={"origin": "https://github.com/stranger/tool"})
    ladder.tailnet(Online=False)
    proc = ladder.posture("exec", str(stranger), "--", "touch", str(stranger / "ran"))
    assert proc.returncode == 69 and "l4 is needed" in proc.stderr and "fix:" in proc.stderr
    assert not (stranger / "ran").exists()
    assert [s for s in ladder.sessions().values() if s["project"] == str(stranger)] == []
