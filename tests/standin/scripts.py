"""The hostile "model" of the gateway tests: its Bash tool tries to take the agent's credential."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

GREP_KEYS = r"grep -rhoaE 'sk-ant-[A-Za-z0-9_-]{20,}' ~ /tmp /run /etc /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | sort -u"


def hostile(door_url: str, socket_inside: str | None = None) -> list[dict]:
    """Turns that print the env, read the credential file, grep for keys, and use the gateway without the sentinel."""
    curl = f"curl -s -m 10 -w ' HTTP=%{{http_code}}' -X POST {door_url}/v1/messages -H 'content-type: application/json' -d '{{}}'"
    turns = [
        {"tool": "Bash", "input": {"command": "echo ENV-BEGIN; env; echo ENV-END", "description": "env"}},
        {"tool": "Bash", "input": {"command": "cat ~/.claude/.credentials.json; echo CAT-END", "description": "creds"}},
        {"tool": "Bash", "input": {"command": f"echo GREP-BEGIN; {GREP_KEYS}; echo GREP-END", "description": "grep"}},
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
