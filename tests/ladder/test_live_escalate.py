"""A live trigger moves a running session up by itself: a detached L2 session whose agent (the real
Claude Code CLI, scripted through the stand-in API) fetches a stranger's page, with
`on_trigger = "escalate"`, ends up escalated to a running L4 child; nothing the model asked for after
the fetch runs at L2; `claude --continue` in the child continues the same conversation at L4.

The CLI runs as the ordinary user posture-test (Claude Code refuses to skip permissions as root),
in the GW namespace where the L2 helper, the L4 host and the stand-in API are reachable."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ladder.asuser import AsUser
from ladder.conftest import Ladder

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from standin.scripts import RemoteStandIn, real  # noqa: E402
from testnet import PUBLIC  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.l2, pytest.mark.l4]
API_PORT = 8445
PROOF = "echo $POSTURE_LEVEL >> proof.txt; cat proof.txt"


def test_a_stranger_fetch_moves_the_session_to_l4(ladder_env: Ladder, tmp_path: Path) -> None:
    me = AsUser(ladder_env, tmp_path)
    api = RemoteStandIn(ladder_env.net.hosts, PUBLIC, API_PORT, [
        {"tool": "WebFetch", "input": {"url": "https://stranger.example/issues/7", "prompt": "what does the issue ask"}},
        {"tool": "Bash", "input": {"command": PROOF, "description": "proof"}},
        {"tool": "Bash", "input": {"command": PROOF, "description": "proof"}},
        {"text": "first run over"},
        {"tool": "Bash", "input": {"command": PROOF, "description": "proof"}},
        {"text": "continued at l4"},
    ], tmp_path / "api")
    agent_env = {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": real("key"),
                 "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    try:
        assert me.posture("l4", "enroll", "--yes").returncode == 0
        repo = me.project()
        assert me.posture("trust", str(repo)).returncode == 0
        up = me.posture("up", str(repo), "--level", "l2", "--profile", "claude-code", "--detach", "--",
                        "claude", "-p", "read the issue and fix it", "--dangerously-skip-permissions", cwd=repo, **agent_env)
        assert up.returncode == 0, up.stderr
        parent = up.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + 240
        child = None
        while time.monotonic() < deadline:
            sessions = {s["id"]: s for s in json.loads(me.posture("status", "--json").stdout)}
            kids = [s for s in sessions.values() if s["parent"] == parent]
            if sessions[parent]["status"] == "escalated" and kids and kids[0]["status"] == "running":
                child = kids[0]
                break
            assert sessions[parent]["status"] in ("running", "frozen"), sessions[parent]
            time.sleep(1)
        assert child is not None, f"no escalation: {me.posture('status', '--json').stdout}\n{(Path('/tmp') / f'posture-{me.uid}' / parent / 'escalate.log')}"
        assert child["level"] == "l4" and child["backend"] == "tailnet"
        triggers = [a for a in me.audit() if a["event"] == "trigger"]
        assert any("stranger.example/issues/7" in a["data"]["evidence"] and a["data"]["outcome"] == "escalating to l4" for a in triggers), triggers
        begin = [a for a in me.audit() if a["event"] == "escalate.begin" and a["data"]["session"] == parent]
        assert begin and "live trigger untrusted_input" in begin[0]["data"]["reason"]
        assert not (repo / "proof.txt").exists()  # nothing the model asked for after the fetch ran at L2

        cont = me.posture("exec", "--session", child["id"], "--", "claude", "--continue", "-p", "go on", "--dangerously-skip-permissions",
                          cwd=repo, **agent_env)
        assert cont.returncode == 0, cont.stderr[-3000:]
        assert "continued at l4" in cont.stdout or "first run over" in cont.stdout, cont.stdout
        last = [r for r in api.requests() if r["path"].startswith("/v1/messages")][-1]
        assert "stranger.example/issues/7" in json.dumps(last), "the continued conversation is not the same one"
        pulled = me.posture("pull", "--session", child["id"], cwd=repo)
        assert pulled.returncode == 0, pulled.stderr
        ref = pulled.stdout.splitlines()[0]
        proof = subprocess.run(["git", "-c", "safe.directory=*", "show", f"{ref}:proof.txt"], cwd=repo, capture_output=True, text=True)
        assert proof.returncode == 0 and "l4" in proof.stdout and "l2" not in proof.stdout, proof
    finally:
        api.stop()
        me.cleanup()

