"""`posture escalate` carries the session's sentinels: an agent that cached its sentinel at L2 keeps
working at L4 (the cheapest real move that has a gateway at both ends: L3 has no door yet), the
stand-in API receives the real key (fetched from the user's `[credentials]` command) at both
levels, and the audit log names what the new session was given (names, hosts, sources: no values)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ladder.conftest import Ladder

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from standin.scripts import RemoteStandIn, real  # noqa: E402
from testnet import PUBLIC  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.l2, pytest.mark.l4]
API_PORT = 8443
# Inside: the sentinel the agent holds, and one API call made with the sentinel it cached before.
CALL = ("echo INSIDE=$ANTHROPIC_API_KEY; curl -s -m 10 -o /dev/null -w 'HTTP=%{http_code}' -H \"x-api-key: ${CACHED:-$ANTHROPIC_API_KEY}\" "
        "-H 'content-type: application/json' -d '{\"model\": \"m\", \"messages\": []}' \"$ANTHROPIC_BASE_URL/v1/messages\"")


def _inside(out: str) -> str:
    return next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("INSIDE="))


def test_escalation_keeps_the_sentinel_and_audits_names_and_hosts(ladder: Ladder, make_repo, tmp_path: Path) -> None:
    assert ladder.user is not None
    key = real("key")
    script = tmp_path / "vault-show"
    script.write_text(f"#!/bin/sh\necho '{key}'\n")
    script.chmod(0o700)
    config = ladder.user.config_file.read_text()
    ladder.user.write_config(config.replace('profile = "shell"', 'profile = "claude-code"')
                             + f'\n[credentials.anthropic]\ncommand = ["{script}", "show", "anthropic"]\ninside_env = "ANTHROPIC_API_KEY"\n')
    api = RemoteStandIn(ladder.net.hosts, PUBLIC, API_PORT, [{"text": "ok"}, {"text": "ok"}], tmp_path / "api")
    env = {"ANTHROPIC_BASE_URL": api.url}
    try:
        repo = make_repo()
        sid = ladder.ok("up", str(repo), "--level", "l2", "--profile", "claude-code", "--detach", "--", "sleep", "100000",
                        env=env).strip().splitlines()[-1]
        low = ladder.ok("exec", "--session", sid, "--", "sh", "-c", CALL, env=env)
        cached = _inside(low)
        assert cached.startswith("sk-ant-api03-") and cached != key and low.rstrip().endswith("HTTP=200"), low
        child = ladder.ok("escalate", "--session", sid, "--to", "l4", "--reason", "test", env=env).strip().splitlines()[-1]
        assert ladder.sessions()[child]["level"] == "l4"
        # the agent at L4 holds the same sentinel, and the one it cached at L2 still works there
        high = ladder.ok("exec", "--session", child, "--", "env", f"CACHED={cached}", "sh", "-c", CALL, env=env)
        assert _inside(high) == cached, (cached, high)
        assert high.rstrip().endswith("HTTP=200"), high
        requests = api.requests()
    finally:
        ladder.posture("down", "--all")
        api.stop()
        ladder.user.write_config(config)
    assert [r["headers"].get("x-api-key") for r in requests] == [key, key]  # the real key, from the command, both times
    log = (ladder.user.state / "audit.log").read_text()
    assert key not in log, [line[:300] for line in log.splitlines() if key in line]
    assert cached not in log.replace(f"CACHED={cached}", ""), "the sentinel in the audit log (beyond the test's own argv)"
    started = [json.loads(line) for line in log.splitlines() if '"escalate.start"' in line]
    given = [e for e in started if e["data"].get("child") == child][-1]["data"]["credentials"]
    assert given == [{"name": "$ANTHROPIC_API_KEY", "hosts": sorted({"api.anthropic.com", PUBLIC}), "refresh": False,
                      "source": "[credentials.anthropic] command " + str(script), "carried": True}], given
