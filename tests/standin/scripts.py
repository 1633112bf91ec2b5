"""The hostile "model" of the gateway tests: its Bash tool tries to take the agent's credential."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

GREP_L2 = "~ /tmp /run /etc /proc/[0-9]*/environ /proc/[0-9]*/cmdline"
GREP_L4 = "~ /home/$USER /proc/[0-9]*/environ /proc/[0-9]*/cmdline"  # the L4 host's /tmp is this machine's


def hostile(where: str = GREP_L2, socket_inside: str | None = None) -> list[dict]:
    """Turns that print the env, read the credential file, grep `where` for keys, and use the gateway
    (the agent's own base URL) without the sentinel."""
    grep = rf"grep -rhoaE 'sk-ant-[A-Za-z0-9_-]{{20,}}' {where} 2>/dev/null | sort -u"
    curl = "curl -s -m 10 -w ' HTTP=%{http_code}' -X POST \"$ANTHROPIC_BASE_URL/v1/messages\" -H 'content-type: application/json' -d '{}'"
    turns = [
        {"tool": "Bash", "input": {"command": "echo ENV-BEGIN; env; echo ENV-END", "description": "env"}},
        {"tool": "Bash", "input": {"command": "cat ~/.claude/.credentials.json; echo CAT-END", "description": "creds"}},
        {"tool": "Bash", "input": {"command": f"echo GREP-BEGIN; {grep}; echo GREP-END", "description": "grep"}},
        {"tool": "Bash", "input": {"command": f"echo NOSENTINEL; {curl}", "description": "gateway"}},
    ]
    if socket_inside:
        turns.append({"tool": "Bash", "input": {"command": f"echo UNIXDOOR; {curl} --unix-socket {socket_inside}", "description": "socket"}})
    return [*turns, {"text": "finished the hostile script"}]


class RemoteStandIn:
    """The stand-in API as a process in a network namespace (the test network's public host)."""

    def __init__(self, ns: str, host: str, port: int, script: list[dict], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.record = workdir / "requests.jsonl"
        self.record.unlink(missing_ok=True)
        script_file = workdir / "script.json"
        script_file.write_text(json.dumps(script))
        here = Path(__file__).resolve().parent / "anthropic.py"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "python3", str(here), "--host", host, "--port", str(port),
             "--script", str(script_file), "--record", str(self.record)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), line
        self.url = f"http://{host}:{port}"

    def requests(self) -> list[dict]:
        """Every request the stand-in received so far."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        time.sleep(0)


def real(kind: str) -> str:
    """A fresh "real" credential of the given kind (key, oauth, refresh), shaped like Anthropic's."""
    body = (uuid.uuid4().hex * 3)[:86]
    return {"key": "sk-ant-api03-", "oauth": "sk-ant-oat01-", "refresh": "sk-ant-ort01-"}[kind] + body + "-xyzAA"


def oauth_login() -> dict:
    """The claudeAiOauth object of a fresh "real" OAuth login (an hour left)."""
    return {"accessToken": real("oauth"), "refreshToken": real("refresh"), "expiresAt": int(time.time() * 1000) + 3600_000,
            "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}


def assess(requests: list[dict], key: str | None, oauth: dict | None, base_url: str, doors: int) -> str:
    """Assert what the hostile run proved (from what the stand-in received); return the tool results."""
    messages = [r for r in requests if r["path"].startswith("/v1/messages")]
    assert len(messages) >= 5, [r["path"] for r in requests]
    results = "\n".join(messages[-1]["tool_results"])
    for marker in ("ENV-END", "CAT-END", "GREP-END", "NOSENTINEL"):  # every probe ran and came back
        assert marker in results, results[-3000:]
    secrets = [s for s in (key, *(oauth or {}).values()) if isinstance(s, str) and s.startswith("sk-ant-")]
    for secret in secrets:
        assert secret not in results, "a real credential reached the agent's tools"
        assert secret not in json.dumps([r["body"] for r in requests]), "a real credential reached the model"
    # the gateway without the sentinel: refused
    assert results.count("HTTP=403") == doors and "does not carry the session's credential" in results, results[-2000:]
    for r in messages:  # the stand-in got the real credential on every request of the conversation
        if key:
            assert r["headers"].get("x-api-key") == key
        else:
            assert oauth is not None and r["headers"].get("authorization") == f"Bearer {oauth['accessToken']}"
    env_part = results.split("ENV-BEGIN", 1)[1].split("ENV-END", 1)[0]
    assert f"ANTHROPIC_BASE_URL={base_url}" in env_part, env_part
    if key:
        assert "ANTHROPIC_API_KEY=sk-ant-api03-" in env_part  # a sentinel, of the same shape
    else:
        assert "ANTHROPIC_API_KEY" not in env_part  # absent stays absent
        cat_part = results.split("CAT-END", 1)[0]
        inside = json.loads(cat_part[cat_part.index("{"):])["claudeAiOauth"]
        assert inside["accessToken"].startswith("sk-ant-oat01-") and inside["expiresAt"] > 4e12
    grep_part = results.split("GREP-BEGIN", 1)[1].split("GREP-END", 1)[0]
    assert "sk-ant-" in grep_part  # control: the grep finds key-shaped strings (the sentinels)
    return results
