"""Live triggers without a sandbox: the push parser, the rules on events, the report channel with
the real in-session hook program, the monitor's decisions and the project watcher."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from posture import plugins
from posture.policy.events import ALLOW, DENY, TOOL_CALL, Event, Fired, Verdict
from posture.policy.pushparse import push_commands
from posture.session import Session, SessionRecord, SessionStore
from posture.triggers import arm, channel, monitor, record
from posture.triggers.watch import Watcher

HOOK = Path(__file__).resolve().parents[2] / "src" / "posture" / "guest" / "hook.py"


@pytest.mark.parametrize("command, pushes", [
    ("git push", True), ("git push origin main", True), ("cd x && git -C repo push --force", True),
    ("git -c core.x=1 push", True), ("FOO=1 git push", True), ("sudo -E git push", True), ("/usr/bin/git push", True),
    ("echo hi; gh pr create --fill", True), ("gh pr merge 12", True), ("npm publish --dry-run", True), ("cargo publish", True),
    ("twine upload dist/*", True), ("docker push img", True), ("(cd a; git push)", True), ("true | git push", True),
    ("git status", False), ("git log --grep push", False), ("echo git push", False), ("gh pr list", False),
    ("npm test", False), ("grep -r push .", False), ("git commit -m 'push later'", False), ("# git push", False),
])
def test_push_parser(command: str, pushes: bool) -> None:
    assert bool(push_commands(command)) is pushes, command


def _settings(user, text: str = "", project: Path | None = None):
    user.write_config(text)
    return plugins.load_settings(project or user.home)


def _rule(name: str):
    return next(r for r in plugins.rules() if r.name == name)


def test_rules_judge_tool_calls(user, make_repo) -> None:
    repo = make_repo(files={".mcp.json": '{"mcpServers": {"tickets": {"command": "tix"}}}'})
    settings = _settings(user, '[triggers]\ntrusted_hosts = ["docs.python.org", "*.example.org"]\n', repo)
    ui, push = _rule("untrusted_input"), _rule("push_intent")

    def call(tool: str, **args: object) -> Event:
        return Event(kind=TOOL_CALL, tool_name=tool, tool_input=dict(args))

    assert ui.on_event(call("WebFetch", url="https://docs.python.org/3/"), repo, settings).fired is False
    assert ui.on_event(call("WebFetch", url="https://api.example.org/x"), repo, settings).fired is False
    stranger = ui.on_event(call("WebFetch", url="https://evil.test/issue/1", prompt="read"), repo, settings)
    assert stranger.fired and "https://evil.test/issue/1" in stranger.evidence and "trusted_hosts" in stranger.evidence
    assert ui.on_event(call("WebFetch", url="https://docs.python.org.evil.test/"), repo, settings).fired
    assert ui.on_event(call("WebSearch", query="x"), repo, settings).fired
    assert ui.on_event(call("WebSearch", query="x", allowed_domains=["docs.python.org"]), repo, settings).fired is False
    mcp_call = ui.on_event(call("mcp__tickets__read", id=3), repo, settings)
    assert mcp_call.fired and "not approved" in mcp_call.evidence
    assert user.run("mcp", "approve", str(repo), "tickets").returncode == 0
    assert ui.on_event(call("mcp__tickets__read", id=3), repo, settings).fired is False
    assert ui.on_event(call("Bash", command="ls"), repo, settings) is None
    assert push.on_event(call("Bash", command="git push origin HEAD"), repo, settings).fired
    assert push.on_event(call("Bash", command="git status"), repo, settings) is None
    assert push.on_event(call("Read", file_path="/x"), repo, settings) is None


def _serve(tmp_path: Path, judge=None):
    heard: list[str] = []
    seen: list[Event] = []

    def default(event: Event) -> Verdict:
        seen.append(event)
        return Verdict(DENY, "no pushing here") if event.tool_name == "Bash" else Verdict(ALLOW)

    server = channel.ReportServer(tmp_path / "report.sock", judge or default, heard.append)
    server.start()
    return server, heard, seen


def _run_hook(sock: Path, hook_input: dict | str) -> subprocess.CompletedProcess[str]:
    """The real hook program, pointed at a test socket (inside a session its path is fixed)."""
    source = HOOK.read_text().replace('REPORT = "/run/posture/report.sock"', f"REPORT = {str(sock)!r}")
    assert str(sock) in source
    text = hook_input if isinstance(hook_input, str) else json.dumps(hook_input)
    return subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", source], input=text, capture_output=True, text=True, timeout=30)


def test_hook_reports_and_prints_claude_codes_verdict(tmp_path: Path) -> None:
    server, heard, seen = _serve(tmp_path)
    try:
        denied = _run_hook(server.path, {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "git push"},
                                         "tool_use_id": "toolu_1", "session_id": "s", "transcript_path": "/x"})
        assert denied.returncode == 0
        out = json.loads(denied.stdout)["hookSpecificOutput"]
        assert out == {"hookEventName": "PreToolUse", "permissionDecision": "deny", "permissionDecisionReason": "no pushing here"}
        allowed = _run_hook(server.path, {"hook_event_name": "PreToolUse", "tool_name": "Read", "tool_input": {"file_path": "/a"}})
        assert allowed.returncode == 0 and allowed.stdout == ""
        assert [e.tool_name for e in seen] == ["Bash", "Read"] and seen[0].tool_input == {"command": "git push"}
        garbage = _run_hook(server.path, "not json")
        assert json.loads(garbage.stdout)["hookSpecificOutput"]["permissionDecision"] == "deny"
        assert heard == ["the hook's input is not JSON"]
    finally:
        server.close()
    gone = _run_hook(server.path, {"tool_name": "Bash", "tool_input": {}})  # no channel: fail closed
    reason = json.loads(gone.stdout)["hookSpecificOutput"]
    assert reason["permissionDecision"] == "deny" and "refused" in reason["permissionDecisionReason"]


@pytest.mark.parametrize("request_bytes", [
    b'{"type": "set_level", "level": "l2"}\n', b'{"op": "escalate", "to": "l2"}\n', b"lower the level\n",
    channel.hook_request({"hook_event_name": "SessionStart", "source": "startup"}),
    channel.hook_request({"tool_name": 3, "tool_input": {}}), channel.hook_request({"tool_name": "Bash", "tool_input": "x"}),
    b"hook 99\n{}", b"hook 2\n[]", b"hook x\n{}", b"",
])
def test_the_channel_carries_events_only(tmp_path: Path, request_bytes: bytes) -> None:
    server, heard, seen = _serve(tmp_path, judge=lambda e: Verdict(ALLOW))
    try:
        decision, text = channel.ask(str(server.path), request_bytes)
        reason = json.loads(text)["hookSpecificOutput"]["permissionDecisionReason"]
        assert decision == DENY and reason.startswith("posture:"), (decision, text)
        assert len(heard) == 1 and not seen
    finally:
        server.close()


def test_the_channel_bounds_a_silent_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr(channel, "REQUEST_TIMEOUT", 0.5)
    server, heard, _ = _serve(tmp_path, judge=lambda e: Verdict(ALLOW))
    try:
        silent = [socket.socket(socket.AF_UNIX) for _ in range(channel.MAX_CLIENTS + 4)]
        for s in silent:
            s.connect(str(server.path))
        time.sleep(1.0)  # the silent ones are closed after the request timeout
        assert channel.ask(str(server.path), channel.hook_request({"tool_name": "Read", "tool_input": {}}))[0] == ALLOW
        for s in silent:
            s.close()
    finally:
        server.close()


def test_managed_settings_keep_the_hosts_and_add_the_hook(tmp_path: Path) -> None:
    host = tmp_path / "managed-settings.json"
    host.write_text(json.dumps({"permissions": {"deny": ["Bash(rm:*)"]}, "disableAllHooks": True,
                                "hooks": {"PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "corp-check"}]}]}}))
    merged = json.loads(arm.managed_settings(host))
    assert merged["permissions"] == {"deny": ["Bash(rm:*)"]} and "disableAllHooks" not in merged
    first, second = merged["hooks"]["PreToolUse"]
    assert first["hooks"][0]["command"] == arm.HOOK_COMMAND and second["hooks"][0]["command"] == "corp-check"
    assert json.loads(arm.managed_settings(tmp_path / "absent"))["hooks"]["PreToolUse"][0]["matcher"] == "*"


def _monitor(user, repo: Path, on_trigger: str, kept: bool, level: str = "l2", config: str = "") -> monitor.Monitor:
    user.write_config('identities = ["me@example.com"]\n' + config)
    rec = SessionRecord(id=f"t-{on_trigger}-{kept}", project=str(repo), level=level, backend="bwrap", profile="shell")
    SessionStore().save(rec)
    return monitor.Monitor(rec, plugins.load_settings(repo), kept=kept, on_trigger=on_trigger)


def _log(session_id: str) -> list[dict]:
    return [json.loads(x) for x in record.egress_log_path(session_id).read_text().splitlines()]


PUSH = Event(kind=TOOL_CALL, tool_name="Bash", tool_input={"command": "git push origin main"})
FETCH = Event(kind=TOOL_CALL, tool_name="WebFetch", tool_input={"url": "https://stranger.test/issue"})
LS = Event(kind=TOOL_CALL, tool_name="Bash", tool_input={"command": "ls"})


def test_deny_names_the_rule_the_evidence_and_the_way_on(user, make_repo) -> None:
    m = _monitor(user, make_repo(), "deny", kept=True)
    verdict = m.judge(PUSH)
    assert verdict.decision == DENY and "push_intent" in verdict.reason and "git push origin main" in verdict.reason
    assert "posture escalate --session" in verdict.reason and "--to l4" in verdict.reason
    assert m.judge(LS).decision == ALLOW  # deny refuses the call, not the session
    entry = _log(m.record_.id)[-1]
    assert entry["rule"] == "push_intent" and entry["outcome"].startswith("denied") and entry["decision"] == "refused" and entry["source"] == "trigger"
    audit = [json.loads(x) for x in (user.state / "audit.log").read_text().splitlines()]
    assert any(a["event"] == "trigger" and a["data"]["rule"] == "push_intent" for a in audit)


def test_log_lets_the_call_run(user, make_repo) -> None:
    m = _monitor(user, make_repo(), "log", kept=True)
    assert m.judge(FETCH).decision == ALLOW
    assert _log(m.record_.id)[-1]["outcome"] == "logged" and _log(m.record_.id)[-1]["decision"] == "allowed"


def test_escalate_in_an_exec_session_acts_as_deny(user, make_repo) -> None:
    m = _monitor(user, make_repo(), "escalate", kept=False)
    verdict = m.judge(FETCH)
    assert verdict.decision == DENY and "acts as deny" in verdict.reason and m.latched is None


def test_escalate_to_an_unavailable_level_denies_and_says_what_to_configure(user, make_repo) -> None:
    m = _monitor(user, make_repo(), "escalate", kept=True)
    verdict = m.judge(FETCH)
    assert verdict.decision == DENY and "cannot run here" in verdict.reason and "[l4]" in verdict.reason
    assert m.latched is None


def test_escalate_latches_every_later_call(user, make_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _monitor(user, make_repo(), "escalate", kept=True)
    started: list[tuple[str, str]] = []
    monkeypatch.setattr(m, "_unavailable", lambda target: "")
    monkeypatch.setattr(m, "_escalate", lambda target, reason: started.append((target, reason)))
    verdict = m.judge(FETCH)
    assert verdict.decision == DENY and "moves to l4" in verdict.reason
    assert started and started[0][0] == "l4" and "stranger.test" in started[0][1]
    later = m.judge(LS)  # nothing more runs at l2
    assert later.decision == DENY and "moving to l4" in later.reason
    assert len(started) == 1


def test_a_trigger_at_the_level_it_asks_for_changes_nothing(user, make_repo) -> None:
    m = _monitor(user, make_repo(), "deny", kept=True, level="l4")
    assert m.judge(PUSH).decision == ALLOW
    assert "already runs at l4" in _log(m.record_.id)[-1]["outcome"]


def test_watcher_fires_on_a_new_mcp_server_and_clears_after_approval(user, make_repo) -> None:
    repo = make_repo()
    m = _monitor(user, repo, "deny", kept=True)
    w = Watcher(m, agent_home=None, interval=3600)
    w.baseline()
    assert m.judge(LS).decision == ALLOW
    (repo / ".mcp.json").write_text('{"mcpServers": {"new": {"command": "npx", "args": ["evil-server"]}}}')
    w.poll_once()
    verdict = m.judge(LS)
    assert verdict.decision == DENY and "unfamiliar_mcp" in verdict.reason and "new" in verdict.reason
    assert user.run("mcp", "approve", str(repo), "new").returncode == 0
    os.utime(repo / ".mcp.json", ns=(time.time_ns(), time.time_ns() + 1000))
    w.poll_once()
    assert m.judge(LS).decision == ALLOW


def test_watcher_looks_again_at_a_config_caught_mid_write_and_fires_on_one_that_stays_broken(user, make_repo) -> None:
    """The agent rewrites its configs in place: an empty file for a moment is not a broken one; a broken one still fires."""
    import threading

    repo = make_repo()
    (repo / ".mcp.json").write_text('{"mcpServers": {}}')
    m = _monitor(user, repo, "deny", kept=True)
    w = Watcher(m, agent_home=None, interval=3600)
    w.baseline()
    (repo / ".mcp.json").write_text("")  # truncated; the rest comes 0.3 s later
    threading.Timer(0.3, lambda: (repo / ".mcp.json").write_text('{"mcpServers": {}}')).start()
    w.poll_once()
    assert m.judge(LS).decision == ALLOW
    (repo / ".mcp.json").write_text("{not json")
    started = time.monotonic()
    w.poll_once()
    verdict = m.judge(LS)
    assert verdict.decision == DENY and "could not be read" in verdict.reason, verdict
    assert time.monotonic() - started < 3


def test_fired_levels_follow_the_users_rule_levels(user, make_repo) -> None:
    m = _monitor(user, make_repo(), "deny", kept=True, config='[rules]\npush_intent = "l3"\n')
    assert m.fired(PUSH) == [Fired("push_intent", "l3", m.fired(PUSH)[0].evidence)]


def test_a_judging_failure_refuses_the_call(tmp_path: Path) -> None:
    def boom(event: Event) -> Verdict:
        raise RuntimeError("rules broke")

    server, _, _ = _serve(tmp_path, judge=boom)
    try:
        decision, text = channel.ask(str(server.path), channel.hook_request({"tool_name": "Read", "tool_input": {}}))
        assert decision == DENY and "rules broke" in text
    finally:
        server.close()



class _Terminal(Session):
    """A session whose agent terminal can be attached to (the rest of the interface is not used here)."""

    attached: list[str] = []

    def start(self, spec) -> None:  # pragma: no cover - not used
        raise AssertionError

    def exec(self, argv, tty) -> int:  # pragma: no cover - not used
        raise AssertionError

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def attach(self) -> int:
        _Terminal.attached.append(self.record.id)
        return 0

    def agent_running(self) -> bool:
        return True


def test_an_attached_terminal_follows_the_session_up(user, make_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    from posture import runner

    store = SessionStore()
    repo = make_repo()
    parent = SessionRecord(id="p-1", project=str(repo), level="l2", backend="bwrap", profile="shell", status="escalated",
                           data={"escalation": {"to": "l4", "step": "done", "child": "c-1"}})
    child = SessionRecord(id="c-1", project=str(repo), level="l4", backend="tailnet", profile="shell", status="running", parent="p-1")
    alone = SessionRecord(id="a-1", project=str(repo), level="l2", backend="bwrap", profile="shell", status="running")
    for rec in (parent, child, alone):
        store.save(rec)
    monkeypatch.setattr(runner, "reopen", lambda rec: _Terminal(rec))
    _Terminal.attached = []
    session, code = runner._attach_following(_Terminal(store.get("p-1")))
    assert code == 0 and _Terminal.attached == ["p-1", "c-1"] and session.record.id == "c-1"
    _Terminal.attached = []
    session, _ = runner._attach_following(_Terminal(store.get("a-1")))  # detached by the user: nothing to follow
    assert _Terminal.attached == ["a-1"] and session.record.id == "a-1"


@pytest.mark.parametrize("command", ["CLAUDE_CODE_SIMPLE=1 claude -p x", "env CLAUDE_CODE_SAFE_MODE=1 claude", "claude --bare -p x",
                                     "echo '{\"disableAllHooks\": true}' > ~/.claude/settings.json"])
def test_a_command_that_switches_the_hook_off_is_refused_even_in_log_mode(user, make_repo, command: str) -> None:
    m = _monitor(user, make_repo(), "log", kept=True)
    verdict = m.judge(Event(kind=TOOL_CALL, tool_name="Bash", tool_input={"command": command}))
    assert verdict.decision == DENY and "switched off" in verdict.reason
    assert _log(m.record_.id)[-1]["rule"] == "hook_bypass"
