"""`posture explain` and `doctor` say which credentials a profile would broker and which are missing."""

from __future__ import annotations

import json

from gwenv import REAL_KEY


def test_explain_and_doctor_name_credentials_never_values(user, make_repo) -> None:
    repo = make_repo()
    user.env["ANTHROPIC_API_KEY"] = REAL_KEY
    proc = user.run("explain", "--json", "--profile", "claude-code", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    creds = json.loads(proc.stdout)["credentials"]
    assert creds["brokered"] == [{"name": "$ANTHROPIC_API_KEY", "hosts": ["api.anthropic.com"],
                                  "source": "profile default: $ANTHROPIC_API_KEY of your environment"}]
    assert "~/.claude/.credentials.json" in creds["missing"] and creds["upstream"] == "https://api.anthropic.com"
    text = user.run("explain", "--profile", "claude-code", cwd=repo).stdout
    assert ("credentials: claude-code: brokered by the session's gateway: $ANTHROPIC_API_KEY (api.anthropic.com; "
            "from profile default: $ANTHROPIC_API_KEY of your environment)") in text
    doctor = user.run("doctor", "--json")
    row = next(r for r in json.loads(doctor.stdout) if r["backend"] == "gateway")
    assert row["ok"] and row["credentials"]["brokered"][0]["name"] == "$ANTHROPIC_API_KEY"
    for out in (proc.stdout, text, doctor.stdout):
        assert REAL_KEY not in out
    # nothing here: doctor says so, with the fix
    del user.env["ANTHROPIC_API_KEY"]
    row = next(r for r in json.loads(user.run("doctor", "--json").stdout) if r["backend"] == "gateway")
    assert not row["ok"] and "log the agent in" in row["fix"]
