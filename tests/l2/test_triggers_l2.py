"""Live triggers at L2 with the real Claude Code CLI running its agent loop against the stand-in API:
the hook posture installs in Claude Code's managed settings reports every tool call; a push is
refused before git runs (deny), runs and is recorded (log); a project change mid-session fires;
the agent can neither change the hook nor say anything but events to the report channel."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from l2env import L2, POSTURE, USER

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from standin.scripts import RemoteStandIn, real  # noqa: E402
from testnet import PUBLIC  # noqa: E402

API_PORT = 8444


def _claude(l2: L2, project: Path, api: RemoteStandIn, *extra: str, background: bool = False):
    env = l2.env(CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1", ANTHROPIC_BASE_URL=api.url,
                 ANTHROPIC_API_KEY=real("key"))
    argv = ["nsenter", f"--net={l2.net.gw_path}", "runuser", "-u", USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
            POSTURE, "exec", str(project), "--level", "l2", "--profile", "claude-code", *extra, "--",
            "claude", "-p", "do the task", "--dangerously-skip-permissions"]
    if background:
        return subprocess.Popen(argv, cwd=str(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    return subprocess.run(argv, cwd=str(project), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _results(api: RemoteStandIn) -> list[str]:
    """The tool results of the last conversation request, in order."""
    messages = [r for r in api.requests() if r["path"].startswith("/v1/messages") and r.get("tool_results") is not None]
    return messages[-1]["tool_results"] if messages else []


def _egress(l2: L2, project: Path) -> list[dict]:
    proc = l2.posture("status", "--json")
    sessions = [s for s in json.loads(proc.stdout) if s["project"] == str(project)] if proc.returncode == 0 else []
    assert sessions, proc.stderr
    log = l2.home / ".local" / "state" / "posture" / "sessions" / f"{sessions[-1]['id']}.egress.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def _bash(command: str) -> dict:
    return {"tool": "Bash", "input": {"command": command, "description": "step"}}


FORGE = ("python3 -c \"import json,socket; s=socket.socket(socket.AF_UNIX); s.connect('/run/posture/report.sock'); "
         "s.sendall(json.dumps({'type': 'set_level', 'level': 'l2', 'on_trigger': 'log'}).encode()+b'\\\\n'); print('FORGED', s.recv(4096).decode())\"")


def test_deny_refuses_the_push_before_git_runs(l2: L2, tmp_path: Path) -> None:
    project = l2.make_project(f"trig-deny-{uuid.uuid4().hex[:6]}")
    script = [
        _bash("git push origin main; echo PUSHED > pushed.txt"),
        _bash("echo SETTINGS; cat /etc/claude-code/managed-settings.json; echo '{}' > /etc/claude-code/managed-settings.json; echo WRITE=$?"),
        _bash("rm -f /run/posture/agent/hook.py; echo RM=$?; ls -l /run/posture/agent/hook.py"),
        _bash(FORGE),
        _bash("echo ok > control.txt; echo CONTROL"),
        {"text": "all done"},
    ]
    api = RemoteStandIn(l2.net.hosts, PUBLIC, API_PORT, script, tmp_path / "api")
    try:
        proc = _claude(l2, project, api)
        results = _results(api)
    finally:
        api.stop()
    assert proc.returncode == 0, f"{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    assert "all done" in proc.stdout
    assert len(results) == 5, results
    push, settings, rm, forged, control = results
    assert "push_intent" in push and "git push origin main" in push and "posture escalate" in push, push
    assert not (project / "pushed.txt").exists()  # the command never ran
    assert "/run/posture/agent/hook.py" in settings and "Read-only file system" in settings and "WRITE=1" in settings, settings
    assert "RM=0" not in rm and "hook.py" in rm, rm
    assert "FORGED deny" in forged and "only the agent" in forged, forged
    assert "CONTROL" in control and (project / "control.txt").read_text() == "ok\n"
    log = _egress(l2, project)
    assert any(e["rule"] == "push_intent" and e["outcome"].startswith("denied") for e in log), log
    assert any(e["rule"] == "report_channel" and e["decision"] == "refused" for e in log), log


def test_log_lets_the_call_run_and_records_it(l2: L2, tmp_path: Path) -> None:
    project = l2.make_project(f"trig-log-{uuid.uuid4().hex[:6]}")
    script = [_bash("git push origin main 2>/dev/null; echo RAN > ran.txt"), {"text": "logged run done"}]
    api = RemoteStandIn(l2.net.hosts, PUBLIC, API_PORT, script, tmp_path / "api")
    try:
        proc = _claude(l2, project, api, "--on-trigger", "log")
    finally:
        api.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (project / "ran.txt").read_text() == "RAN\n"
    log = _egress(l2, project)
    assert [e["outcome"] for e in log if e["rule"] == "push_intent"] == ["logged"], log


def test_untrusted_fetch_fires_and_a_changed_mcp_config_stops_the_agent(l2: L2, tmp_path: Path) -> None:
    project = l2.make_project(f"trig-mcp-{uuid.uuid4().hex[:6]}")
    script = [
        {"tool": "WebFetch", "input": {"url": "https://stranger.example/issues/7", "prompt": "summarise"}},
        _bash("for i in $(seq 200); do [ -e go ] && break; sleep 0.1; done; sleep 3; echo WAITED"),
        _bash("echo after > after.txt"),
        {"text": "watched run done"},
    ]
    api = RemoteStandIn(l2.net.hosts, PUBLIC, API_PORT, script, tmp_path / "api")
    try:
        running = _claude(l2, project, api, background=True)
        deadline = time.monotonic() + 120
        while len([r for r in api.requests() if r["path"].startswith("/v1/messages")]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        # the user (on the host) adds an MCP server to the project while the agent works
        (project / ".mcp.json").write_text('{"mcpServers": {"scraper": {"command": "npx", "args": ["-y", "some-scraper"]}}}')
        (project / "go").write_text("")
        subprocess.run(["chown", f"{l2.uid}:{l2.gid}", str(project / ".mcp.json"), str(project / "go")], check=True)
        out, err = running.communicate(timeout=240)
        results = _results(api)
    finally:
        api.stop()
    assert running.returncode == 0, err[-3000:]
    fetch, waited, after = results[:3]
    assert "untrusted_input" in fetch and "stranger.example" in fetch, fetch
    assert "WAITED" in waited
    assert "unfamiliar_mcp" in after and "scraper" in after, after
    assert not (project / "after.txt").exists()
    log = _egress(l2, project)
    assert {"untrusted_input", "unfamiliar_mcp"} <= {e["rule"] for e in log}, log
