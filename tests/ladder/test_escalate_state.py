"""The agent's per-project state moves with an L2 -> L4 escalation (Claude Code's history is found
under the key of the work tree's path on the host, so `claude --continue` continues), a later L4
session of the project continues too, and no credential file of the user's travels (the agent gets the
gateway's sentinels at both levels; the host's own credentials are not linked in)."""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from support import git
from ladder.conftest import Ladder

pytestmark = [pytest.mark.root, pytest.mark.l2, pytest.mark.l4]

# Inside a session: Claude Code's history directory for the current working directory.
KEYDIR = '"$HOME/.claude/projects/$(pwd | sed "s/[^A-Za-z0-9]/-/g")"'


def sent(ladder: Ladder) -> int:
    """How many state files the newest session sent to the host."""
    assert ladder.user is not None
    newest = list(ladder.sessions())[-1]
    return json.loads((ladder.user.state / "sessions" / f"{newest}.json").read_text())["data"]["state_sent"]


def test_claude_history_follows_the_escalation_and_credentials_stay(ladder: Ladder, make_repo) -> None:
    assert ladder.user is not None
    canary = uuid.uuid4().hex
    repo = make_repo(files={"README.md": "hello\n"})
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    # the user's own Claude credentials (their sentinels are what L2 sessions see)...
    creds = ladder.user.home / ".claude" / ".credentials.json"
    creds.parent.mkdir(parents=True)
    creds.write_text(json.dumps({"token": f"local-credential-{canary}"}))
    # ...and the host's own: no longer linked in (the agent on the host uses the gateway)
    vps_pw = pwd.getpwnam(ladder.vps.user)
    vps_creds = Path(vps_pw.pw_dir) / ".claude" / ".credentials.json"
    vps_creds.parent.mkdir(exist_ok=True)
    vps_creds.write_text('{"token": "the-host-own"}\n')
    subprocess.run(["chown", "-R", f"{vps_pw.pw_uid}:{vps_pw.pw_gid}", str(vps_creds.parent)], check=True)
    try:
        out = ladder.ok("up", str(repo), "--level", "l2", "--profile", "claude-code", "--detach", "--", "sleep", "100000")
        sid = out.strip().splitlines()[-1]
        entry = json.dumps({"type": "user", "message": f"conversation before the move {canary}"})
        write = f"mkdir -p {KEYDIR} && echo '{entry}' > {KEYDIR}/s1.jsonl && cat $HOME/.claude/.credentials.json"
        seen = ladder.ok("exec", "--session", sid, "--", "sh", "-c", write)
        assert f"local-credential-{canary}" not in seen and json.loads(seen)["token"]  # L2 shows the sentinel
        # an agent that logged in inside the sandbox leaves a credential file in the state itself
        from posture import gitutil, paths

        state_home = paths.state_dir() / "projects" / gitutil.project_key(repo) / "claude-code" / "home"
        assert (state_home / ".claude" / "projects").is_dir(), state_home
        (state_home / ".claude" / ".credentials.json").write_text(f"state-credential-{canary}\n")

        child = ladder.ok("escalate", "--session", sid, "--to", "l4").strip().splitlines()[-1]
        assert ladder.sessions()[child]["level"] == "l4"

        probe = (
            f"pwd; echo \"$HOME\"; cat {KEYDIR}/s1.jsonl; tr -d \"\\n\" < \"$HOME/.claude/.credentials.json\"; echo; "
            f"echo '{{\"type\": \"user\", \"message\": \"said at L4\"}}' >> {KEYDIR}/s1.jsonl"
        )
        lines = ladder.ok("exec", "--session", child, "--", "sh", "-c", probe).splitlines()
        worktree, home = lines[0], lines[1]
        assert worktree != str(repo) and "/sessions/" in worktree  # another path: the key had to be mapped
        assert home.startswith(str(ladder.vps.home)) and "/state/" in home
        assert json.loads(lines[2])["message"] == f"conversation before the move {canary}"
        host_view = json.loads(lines[3])  # the session's sentinel file: neither the host's own nor the user's
        assert host_view["token"] not in ("the-host-own", f"local-credential-{canary}") and len(host_view["token"]) >= 40
        # nothing of the user's credentials reached the host, wherever they were kept locally
        found = subprocess.run(["grep", "-rl", canary, str(ladder.vps.home)], capture_output=True, text=True).stdout.split()
        assert all(f.endswith(".jsonl") for f in found), found  # only the conversation carries the canary
        assert not subprocess.run(["grep", "-rq", f"credential-{canary}", str(ladder.vps.home)]).returncode == 0

        # a later L4 session of the project (another work tree path) continues the same conversation
        ladder.ok("down", "--session", child)
        later = ladder.ok("exec", str(repo), "--level", "l4", "--profile", "claude-code", "--", "sh", "-c", f"pwd; cat {KEYDIR}/s1.jsonl").splitlines()
        assert later[0] != worktree
        assert [json.loads(x)["message"] for x in later[1:]] == [f"conversation before the move {canary}", "said at L4"]
        # ...and nothing of the state was sent again: it had not changed here since the escalation
        assert sent(ladder) == 0
        # a host that lost the state gets all of it again (posture notices by the state home's id)
        subprocess.run(["rm", "-rf", home], check=True)
        again = ladder.ok("exec", str(repo), "--level", "l4", "--profile", "claude-code", "--", "sh", "-c", f"cat {KEYDIR}/s1.jsonl").splitlines()
        assert [json.loads(x)["message"] for x in again] == [f"conversation before the move {canary}"]
        assert sent(ladder) > 0
    finally:
        shutil.rmtree(vps_creds.parent, ignore_errors=True)
