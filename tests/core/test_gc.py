"""State that does not pile up: `status` shows live and recently ended sessions, `gc` prunes ended
ones past `[sessions] retention_days` with their runtime dirs, never what is live, kept alive, or
holding L4 work not pulled; the audit log is never pruned. Real records in a temp state dir and
the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posture import audit, retention
from posture.errors import ConfigError
from posture.session import SessionRecord, SessionStore, session_runtime_dir
from support import User, git

DAY = 86400.0


@pytest.fixture
def me(user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> User:
    """The user, with a private runtime dir of its own (sockets and scratch of its sessions)."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    user.env["XDG_RUNTIME_DIR"] = str(runtime)
    return user


def make(sid: str, status: str, ended_days_ago: float, backend: str = "bwrap", level: str = "l2", project: str = "/srv/p",
         **fields) -> SessionRecord:
    """A real session record, last written `ended_days_ago`, with a runtime dir holding a file."""
    store = SessionStore()
    record = SessionRecord(id=sid, project=project, level=level, backend=backend, profile="shell", status=status, **fields)
    store.save(record)
    when = time.time() - ended_days_ago * DAY
    os.utime(store.root / f"{sid}.json", (when, when))
    (session_runtime_dir(sid) / "keeper.log").write_text("log\n")
    return record


def exists(sid: str) -> bool:
    return (SessionStore().root / f"{sid}.json").exists()


def runtime_exists(sid: str) -> bool:
    return (Path(os.environ["XDG_RUNTIME_DIR"]) / "posture" / sid).exists()


def fresh_stamp() -> None:
    """As if pruning ran a moment ago: `status` does not prune now."""
    retention._touch_stamp(time.time())


@pytest.fixture
def keeper():
    """A live process standing in for a session's keeper."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


# ------------------------------------------------------------------ status

def test_status_shows_live_and_recently_ended_sessions(me: User, keeper: int) -> None:
    fresh_stamp()
    make("live", "running", 40, keeper_pid=keeper)
    make("recent", "stopped", 0.1)
    make("older", "stopped", 3)
    make("failed", "failed", 30)
    make("dead", "dead", 30)  # its keeper vanished: it needs `posture down`, so it stays in view
    proc = me.run("status")
    assert proc.returncode == 0, proc.stderr
    shown = [line.split()[0] for line in proc.stdout.splitlines() if not line.startswith(" ")]
    assert sorted(shown) == ["dead", "live", "recent"]
    assert "2 sessions that ended more than 24 h ago not shown (`posture status --all`)" in proc.stderr
    everything = me.run("status", "--all").stdout
    assert all(sid in everything for sid in ("live", "recent", "older", "failed", "dead"))
    listed = json.loads(me.run("status", "--json").stdout)
    assert sorted(r["id"] for r in listed) == ["dead", "live", "recent"]
    assert set(listed[0]) == {"id", "project", "level", "backend", "status", "parent", "created", "profile", "checkpoints", "note"}
    assert len(json.loads(me.run("status", "--json", "--all").stdout)) == 5
    assert all(exists(s) for s in ("live", "recent", "older", "failed", "dead"))  # showing prunes nothing


def test_status_with_nothing_recent_says_so(me: User) -> None:
    fresh_stamp()
    make("older", "stopped", 3)
    proc = me.run("status")
    assert proc.stdout.strip() == "no sessions" and "1 session that ended" in proc.stderr
    assert json.loads(me.run("status", "--json").stdout) == []


# ------------------------------------------------------------------ gc

def test_gc_dry_run_then_prune(me: User, keeper: int) -> None:
    make("old", "stopped", 20)
    make("old-escalated", "escalated", 15)
    make("old-failed", "failed", 60)
    make("young", "stopped", 13)
    make("live", "running", 60, keeper_pid=keeper)
    make("kept-alive", "stopped", 60, keeper_pid=keeper)  # its keeper still runs
    make("dead", "dead", 60)
    audit.record("session.start", session="old")
    log_before = audit.log_path().read_bytes()

    proc = me.run("gc", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sorted(line.split()[2] for line in lines if line.startswith("would remove")) == ["old", "old-escalated", "old-failed"]
    assert f"kept kept-alive: its keeper process {keeper} is still running" in lines
    assert "kept dead: its keeper died without cleaning up; `posture down --session dead` first" in lines
    assert not any("young" in line or " live" in line for line in lines)
    assert "would remove 3 ended sessions, kept 2 past the retention period" in proc.stderr
    assert all(exists(s) and runtime_exists(s) for s in ("old", "old-escalated", "old-failed"))

    proc = me.run("gc")
    assert proc.returncode == 0, proc.stderr
    assert sorted(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("removed")) == ["old", "old-escalated", "old-failed"]
    for sid in ("old", "old-escalated", "old-failed"):
        assert not exists(sid) and not runtime_exists(sid)
        assert not (SessionStore().root / f"{sid}.lock").exists()
    for sid in ("young", "live", "kept-alive", "dead"):
        assert exists(sid) and runtime_exists(sid)
    # the audit log is never pruned: it only grew, by the record of what gc removed
    log_after = audit.log_path().read_bytes()
    assert log_after.startswith(log_before)
    last = json.loads(log_after.splitlines()[-1])
    assert last["event"] == "sessions.gc" and sorted(last["data"]["removed"]) == ["old", "old-escalated", "old-failed"]
    assert last["data"]["retention_days"] == 14
    assert me.run("audit", "verify").returncode == 0
    # nothing left to do
    proc = me.run("gc")
    assert not any(line.startswith("removed") for line in proc.stdout.splitlines())


def test_l4_work_is_kept_until_pulled_after_it_ended(me: User, make_repo) -> None:
    repo = make_repo()
    ckpt = ["refs/posture/l4old/checkpoint-1"]
    make("l4old", "stopped", 20, backend="tailnet", level="l4", project=str(repo), checkpoints=ckpt, data={"bare": "posture/x.git"})
    make("l4never", "failed", 20, backend="tailnet", level="l4", project=str(repo))  # never synced: no work anywhere
    proc = me.run("gc")
    assert "removed l4never" in proc.stdout
    assert "kept l4old: its work on the l4 host was not pulled since it ended; `posture pull --session l4old`" in proc.stdout
    assert exists("l4old")
    # a pull recorded in the audit log but no pull ref in the project (removed, or another project): still kept
    audit.record("l4.pull", session="l4old", ref="refs/posture/l4old/pull-1", commit="0" * 40, base="0" * 40)
    assert "kept l4old" in me.run("gc").stdout
    # pulled after it ended, and the ref is there: it may go
    git(repo, "update-ref", "refs/posture/l4old/pull-1", "HEAD")
    proc = me.run("gc")
    assert "removed l4old" in proc.stdout and not exists("l4old")
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/posture/l4old/") == "refs/posture/l4old/pull-1"  # the user's refs stay


def test_l4_work_pulled_before_the_session_stopped_is_kept(me: User, make_repo) -> None:
    """The agent may have worked on after the last pull; stop captured that on the host."""
    repo = make_repo()
    audit.record("l4.pull", session="l4mid", ref="refs/posture/l4mid/pull-1", commit="0" * 40, base="0" * 40)
    git(repo, "update-ref", "refs/posture/l4mid/pull-1", "HEAD")
    make("l4mid", "stopped", -0.01, backend="tailnet", level="l4", project=str(repo), checkpoints=["c"])  # stopped after the pull
    later = time.time() + 30 * DAY
    verdicts = retention.prune(now=later, days=14)
    assert [(v.record.id, v.prune) for v in verdicts] == [("l4mid", False)] and "not pulled since it ended" in verdicts[0].reason
    assert exists("l4mid")


def test_a_mount_in_the_runtime_dir_keeps_the_session(me: User) -> None:
    """rm -r must never descend into something mounted there (a leftover bind of the project, say)."""
    make("mounted", "stopped", 20)
    make("plain", "stopped", 20)
    inside = session_runtime_dir("mounted") / "project"
    inside.mkdir()
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    script = f'mount -t tmpfs posture-test "{inside}" && echo precious > "{inside}/file" && exec "$0" gc'
    proc = subprocess.run([*unshare, "sh", "-c", script, me_bin()], env=me.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "kept mounted: its runtime dir holds a mount" in proc.stdout and "removed plain" in proc.stdout
    assert exists("mounted") and inside.is_dir() and not exists("plain")


def me_bin() -> str:
    from support import posture_bin

    return posture_bin()


# ------------------------------------------------------------------ the retention period

def test_retention_days_from_the_user_config(me: User) -> None:
    make("three", "stopped", 3)
    make("one", "stopped", 1.5)
    me.write_config("[sessions]\nretention_days = 2\n")
    proc = me.run("gc")
    assert "removed three" in proc.stdout and "one" not in proc.stdout
    assert not exists("three") and exists("one")
    assert json.loads(audit.log_path().read_text().splitlines()[-1])["data"]["retention_days"] == 2


@pytest.mark.parametrize("value", ["0", '"14"', "true", "4000", "-1"])
def test_bad_retention_days_is_one_clear_line(me: User, value: str) -> None:
    make("old", "stopped", 20)
    path = me.write_config(f"[sessions]\nretention_days = {value}\n")
    proc = me.run("gc")
    assert proc.returncode == 64
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"posture: {path}:2: sessions.retention_days: expected a whole number from 1 to 3650")
    # status still works with a bad config, and prunes nothing
    assert me.run("status", "--all").returncode == 0 and exists("old")
    with pytest.raises(ConfigError):
        retention.retention_days()


def test_unknown_sessions_key_is_an_error(me: User) -> None:
    me.write_config("[sessions]\nretention = 2\n")
    proc = me.run("gc")
    assert proc.returncode == 64 and "sessions.retention: unknown key (expected one of: retention_days)" in proc.stderr


def test_a_repo_file_cannot_set_retention(me: User, make_repo) -> None:
    from posture import plugins

    repo = make_repo(files={".posture.toml": "[sessions]\nretention_days = 1\n"})
    me.write_config("[sessions]\nretention_days = 30\n")
    settings = plugins.load_settings(repo)
    assert settings.retention_days == 30
    assert "sessions" in dict(settings.repo_ignored)
    proc = me.run("explain", str(repo))
    assert "IGNORED: sessions: how long posture keeps ended sessions is the user's choice" in proc.stdout


# ------------------------------------------------------------------ automatic pruning

def test_status_and_up_prune_at_most_once_a_day(me: User) -> None:
    make("first", "stopped", 20)
    assert me.run("status").returncode == 0
    assert not exists("first") and not runtime_exists("first")
    stamp = retention._stamp()
    assert stamp.exists()
    make("second", "stopped", 20)
    me.run("status")
    assert exists("second")  # pruned less than a day ago: not again
    day_ago = time.time() - DAY - 60
    os.utime(stamp, (day_ago, day_ago))
    proc = me.run("up", "--level", "l7")  # prunes first; the bad level then exits 64
    assert proc.returncode == 64
    assert not exists("second")
    events = [json.loads(x) for x in audit.log_path().read_text().splitlines()]
    gcs = [e["data"] for e in events if e["event"] == "sessions.gc"]
    assert [g["removed"] for g in gcs] == [["first"], ["second"]] and all(g["auto"] for g in gcs)


def test_exec_does_not_prune(me: User) -> None:
    make("old", "stopped", 20)
    me.run("exec", "--level", "l7", "--", "true")
    assert exists("old") and not retention._stamp().exists()


def test_auto_pruning_costs_one_stat_when_not_due(me: User) -> None:
    fresh_stamp()
    make("old", "stopped", 20)
    code = ("import sys, time; from posture import retention; t = time.perf_counter(); retention.maybe_prune(); "
            "print(time.perf_counter() - t); print('posture.plugins' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], env=me.env, capture_output=True, text=True, check=True)
    took, loaded = proc.stdout.split()
    assert float(took) < 0.01 and loaded == "False", proc.stdout
    assert exists("old")


def test_a_record_whose_id_is_a_path_is_never_followed(me: User) -> None:
    """A record names its own runtime dir; an id with path characters must not aim gc elsewhere."""
    store = SessionStore()
    victim = Path(os.environ["XDG_RUNTIME_DIR"]) / "victim"
    victim.mkdir()
    (victim / "precious").write_text("x")
    body = json.dumps({"id": "../victim", "project": "/p", "level": "l2", "backend": "bwrap", "profile": "shell", "status": "stopped"})
    (store.root / "evil.json").write_text(body)
    (store.root.parent / "victim.json").write_text(body)  # where the record's own id points
    old = time.time() - 30 * DAY
    for path in (store.root / "evil.json", store.root.parent / "victim.json"):
        os.utime(path, (old, old))
    proc = me.run("gc")
    assert proc.returncode == 0, proc.stderr
    assert "kept ../victim: its id is not a session id" in proc.stdout
    assert (victim / "precious").exists() and (store.root.parent / "victim.json").exists()
