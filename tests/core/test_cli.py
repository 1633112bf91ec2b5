"""The real console script: exit codes, one-line errors, JSON shapes, audit records."""

from __future__ import annotations

import json

from support import User


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_version_and_help(user: User) -> None:
    proc = user.run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("posture ")
    helptext = user.run("--help").stdout
    for command in ("up", "exec", "attach", "status", "down", "explain", "doctor", "setup", "trust", "mcp", "audit"):
        assert f" {command} " in helptext
    assert "77 refused by policy" in helptext


def test_usage_errors_exit_64(user: User, make_repo) -> None:
    assert user.run().returncode == 64
    assert "No such command" in one_line(user.run("bogus"))
    assert user.run("bogus").returncode == 64
    proc = user.run("exec", str(make_repo()))
    assert proc.returncode == 64 and "no command given" in one_line(proc)
    proc = user.run("exec", "--level", "l7", "--", "true")
    assert proc.returncode == 64 and "l7" in one_line(proc)
    proc = user.run("exec", "--session", "nope", "--", "true")
    assert proc.returncode == 64 and "no session 'nope'" in one_line(proc)
    proc = user.run("explain", "/does/not/exist")
    assert proc.returncode == 64 and "/does/not/exist" in one_line(proc)
    proc = user.run("explain", "--intent", "deploy")
    assert proc.returncode == 64 and "--intent" in one_line(proc)
    proc = user.run("down")
    assert proc.returncode == 64 and "no running session" in one_line(proc)
    proc = user.run("up", "--profile", "nonexistent", "--level", "l2")
    assert proc.returncode == 64 and "no profile named" in one_line(proc)


def test_config_error_reaches_the_user_as_one_line(user: User, make_repo) -> None:
    user.write_config('[env]\npass = ["OK"]\nsurprise = true\n')
    proc = user.run("explain", str(make_repo()))
    assert proc.returncode == 64
    assert one_line(proc) == f"posture: {user.config_file}:3: env.surprise: unknown key (expected one of: drop, pass)"


def test_auto_never_falls_back_and_says_what_to_configure(user: User, make_repo) -> None:
    """The rules give l4; with no L4 host configured posture refuses (69) instead of running lower."""
    repo = make_repo(remotes={"origin": "https://github.com/stranger/x"})
    proc = user.run("exec", str(repo), "--", "true")
    assert proc.returncode == 69
    line = one_line(proc)
    assert "l4 is needed" in line and "untrusted_repo" in line and "fix:" in line
    events = [json.loads(x)["event"] for x in (user.state / "audit.log").read_text().splitlines()]
    assert "decision" in events and "session.start" not in events


def test_status_json_is_a_list(user: User) -> None:
    proc = user.run("status", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == []
    assert user.run("status").stdout.strip() == "no sessions"


def test_doctor_reports_every_level(user: User) -> None:
    proc = user.run("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["level"] for r in rows} == {"l2", "l3", "l4", "all"}  # "all": the gateway's credentials row
    for row in rows:
        assert set(row) >= {"level", "backend", "check", "ok", "detail", "fix"}
        assert row["ok"] or row["fix"], row


def test_trust_and_approvals_are_audited(user: User, make_repo) -> None:
    repo = make_repo(files={".mcp.json": '{"mcpServers": {"a": {"command": "x"}}}'})
    user.run("trust", str(repo))
    user.run("mcp", "approve", str(repo), "a")
    records = [json.loads(x) for x in (user.state / "audit.log").read_text().splitlines()]
    assert [r["event"] for r in records] == ["trust", "mcp.approve"]
    assert records[1]["data"]["fingerprint"] and records[1]["data"]["command"] == "x"
    assert user.run("audit", "verify").returncode == 0


def test_builtins_register_through_entry_points() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="posture")}
    assert names["bwrap"] == "posture.backends.bwrap"
    assert names["libvirt"] == "posture.backends.libvirt"
    assert names["tailnet"] == "posture.backends.tailnet"
    assert names["rules"] == "posture.policy.rules"
    from posture import plugins

    plugins.manager.cache_clear()
    pm = plugins.manager()
    registered = {pm.get_name(p) for p in pm.get_plugins()}
    assert {"bwrap", "libvirt", "tailnet", "rules"} <= registered
    assert {b.level for b in plugins.backends()} == {"l2", "l3", "l4"}


def test_shell_completion(user: User) -> None:
    env = {**user.env, "_POSTURE_COMPLETE": "complete_bash", "COMP_WORDS": "posture ex", "COMP_CWORD": "1"}
    import subprocess

    from support import posture_bin

    proc = subprocess.run([posture_bin()], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and set(proc.stdout.split()) == {"exec", "explain"}
    env.update(COMP_WORDS="posture escalate --t", COMP_CWORD="2")
    assert subprocess.run([posture_bin()], env=env, capture_output=True, text=True).stdout.split() == ["--to"]
