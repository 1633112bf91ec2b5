"""L2 lifecycle: nothing survives a session, posture fails closed when the rule is stale,
per-project agent state, extra blocks from the user config, detached sessions, the real
Claude Code CLI, doctor, and `posture setup` / `--remove` in a network namespace."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from l2env import L2, POSTURE, start_netd, stop_netd
from testnet import PORT, PUBLIC, in_ns

from posture.netd import cgroups

pytestmark = [pytest.mark.root, pytest.mark.l2]


def _user_pids(cmdline: str) -> list[int]:
    """Pids of posture-test's processes whose command line is exactly `cmdline` (or starts with it, for one word)."""
    found = []
    want = cmdline.split()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != pwd.getpwnam("posture-test").pw_uid:
                continue
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        except OSError:
            continue
        if argv == want or (len(want) == 1 and argv and os.path.basename(argv[0]) == want[0]):
            found.append(int(pid))
    return found


def test_no_process_survives_the_session(l2: L2) -> None:
    project = l2.make_project("survive")
    marker = project / "ready"
    # background processes that outlive the command (their output detached, so the command's output ends with it)
    cmd = f"exec >/dev/null 2>&1; sleep 4242 & setsid sleep 4242 & (trap '' HUP TERM; sleep 4242) & touch {marker}; sleep 3"
    proc = subprocess.Popen(
        ["runuser", "-u", "posture-test", "--", "env", "-i", *[f"{k}={v}" for k, v in l2.env().items()],
         POSTURE, "exec", str(project), "--level", "l2", "--profile", "shell", "--", "sh", "-c", cmd],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not marker.exists():
        proc.kill()
        raise AssertionError(proc.communicate())
    # while it runs, the sandbox is in its own cgroup and slirp4netns in the filtered one
    boxes, nets = l2.box_cgroups(), l2.net_cgroups()
    assert len(boxes) == 1 and len(nets) == 1, (boxes, nets)
    assert len(cgroups.procs(f"{l2.base}/box/{boxes[0]}")) >= 5
    slirp = cgroups.procs(f"{l2.base}/net/{nets[0]}")
    assert slirp and all(Path(f"/proc/{p}/comm").read_text().strip() == "slirp4netns" for p in slirp)
    deadline = time.monotonic() + 5
    while len(_user_pids("sleep 4242")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the background shells may not have exec'd sleep yet
    assert len(_user_pids("sleep 4242")) == 3
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # afterwards: every process of the sandbox is gone at once (killed through its cgroup) ...
    assert _user_pids("sleep 4242") == []
    box = cgroups.path_of(f"{l2.base}/box/{boxes[0]}")
    assert not box.exists() or cgroups.procs(f"{l2.base}/box/{boxes[0]}") == []
    # ... and the helper removes the session's cgroups and its slirp4netns within moments (posture does not wait)
    deadline = time.monotonic() + 5
    while (l2.box_cgroups() or l2.net_cgroups() or any(Path(f"/proc/{p}").exists() for p in slirp)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert l2.box_cgroups() == [] and l2.net_cgroups() == []
    assert cgroups.procs(f"{l2.base}/box") == []
    assert all(not Path(f"/proc/{p}").exists() for p in slirp)


def _refuses(l2: L2, project: Path) -> subprocess.CompletedProcess[str]:
    proc = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "touch", str(project / "ran"))
    assert proc.returncode == 69, (proc.returncode, proc.stderr)
    assert not (project / "ran").exists(), "the command ran although the network policy was not in force"
    assert l2.box_cgroups() == [] and _user_pids("bwrap") == []
    return proc


def test_recreated_cgroup_makes_posture_refuse(l2: L2) -> None:
    project = l2.make_project("recreated")
    ok = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "true")
    assert ok.returncode == 0, ok.stderr
    net = cgroups.path_of(f"{l2.base}/net")
    old = cgroups.cgroup_id(f"{l2.base}/net")
    cgroups.remove(f"{l2.base}/net")  # with the helper's idle launchers inside it
    os.mkdir(net)
    assert cgroups.cgroup_id(f"{l2.base}/net") != old
    try:
        proc = _refuses(l2, project)
        assert "deleted and re-created" in proc.stderr
        assert l2.status()["verified"] is False
    finally:
        stop_netd(l2.netd_proc)
        l2.netd_proc = start_netd(l2.net, l2.sock, l2.base, l2.table)
    assert l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "true").returncode == 0


@pytest.mark.parametrize("change", [["delete", "table"], ["flush", "table"]], ids=["deleted", "flushed"])
def test_unloaded_rule_makes_posture_refuse(l2: L2, change: list[str]) -> None:
    project = l2.make_project(f"unloaded-{change[0]}")
    # a session first, so the helper has a passed check to remember: the change must still be seen
    ok = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "true")
    assert ok.returncode == 0, ok.stderr
    in_ns(l2.net.gw, "nft", *change, "inet", l2.table)
    try:
        proc = _refuses(l2, project)
        assert "not loaded" in proc.stderr or "not in force" in proc.stderr
    finally:
        stop_netd(l2.netd_proc)
        l2.netd_proc = start_netd(l2.net, l2.sock, l2.base, l2.table)


def test_no_helper_means_exit_69(l2: L2) -> None:
    project = l2.make_project("nohelper")
    proc = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "touch", str(project / "ran"),
                      POSTURE_NETD_SOCKET=str(l2.home / "no-such.sock"))
    assert proc.returncode == 69, proc.stderr
    assert "posture setup" in proc.stderr
    assert not (project / "ran").exists()


def test_agent_state_is_per_project_and_persists(l2: L2) -> None:
    a, b = l2.make_project("state-a"), l2.make_project("state-b")
    write = "mkdir -p ~/.claude/projects/mine && echo remembered-a > ~/.claude/projects/mine/history.jsonl && echo a-line >> ~/.claude/history.jsonl"
    r = l2.posture("exec", str(a), "--level", "l2", "--profile", "claude-code", "--", "sh", "-c", write)
    assert r.returncode == 0, r.stderr
    # the same project again: its state is still there
    r = l2.posture("exec", str(a), "--level", "l2", "--profile", "claude-code", "--", "sh", "-c", "cat ~/.claude/projects/mine/history.jsonl; ls ~/.claude/projects")
    assert r.returncode == 0, r.stderr
    assert "remembered-a" in r.stdout
    assert "-other-project" not in r.stdout  # the host's own Claude history is not there
    # another project: none of it
    r = l2.posture("exec", str(b), "--level", "l2", "--profile", "claude-code", "--", "sh", "-c",
                   "ls -a ~/.claude/projects; cat ~/.claude/history.jsonl ~/.claude.json 2>&1; grep -r remembered-a ~ 2>/dev/null; true")
    assert r.returncode == 0, r.stderr
    assert "mine" not in r.stdout and "remembered-a" not in r.stdout and "a-line" not in r.stdout
    assert l2.canary not in r.stdout
    # the host's own ~/.claude is untouched
    assert not (l2.home / ".claude" / "projects" / "mine").exists()


def test_extra_blocks_from_the_user_config(l2: L2) -> None:
    project = l2.make_project("extra")
    cfg = l2.home / ".config" / "posture" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    # the socket comes from the config file this time, not from the environment
    cfg.write_text(f'[network]\nblock = ["{PUBLIC}/32"]\n\n[l2]\nnetd_socket = "{l2.sock}"\n')
    subprocess.run(["chown", "-R", f"{l2.uid}:{l2.gid}", str(l2.home / ".config")], check=True)
    reach = f"import socket; s=socket.create_connection(('{PUBLIC}', {PORT}), timeout=3); print(s.recv(64).decode())"
    try:
        r = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "python3", "-c", reach, POSTURE_NETD_SOCKET="")
        assert r.returncode != 0 and "hello" not in r.stdout, (r.stdout, r.stderr)
        assert "ConnectionRefused" in r.stderr or "timed out" in r.stderr
    finally:
        cfg.unlink()
    r = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "python3", "-c", reach)
    assert r.returncode == 0 and f"hello from {PUBLIC}" in r.stdout, r.stderr
    rules = in_ns(l2.net.gw, "nft", "list", "chain", "inet", l2.table, "sessions").stdout
    assert PUBLIC not in rules  # the session's extra rules went with it


def test_detached_session_exec_freeze_and_down(l2: L2) -> None:
    project = l2.make_project("detached")
    r = l2.posture("up", str(project), "--level", "l2", "--profile", "shell", "--detach", "--", "sleep", "10000")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip().splitlines()[-1]
    try:
        r = l2.posture("exec", "--session", sid, "--", "sh", "-c", "echo $POSTURE_SESSION $POSTURE_LEVEL; pgrep -c sleep")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[:2] == [sid, "l2"]
        box = f"{l2.base}/box/u{l2.uid}-{sid}"
        assert cgroups.populated(box)
        st = json.loads(l2.posture("status", "--json").stdout)
        assert [s["level"] for s in st if s["id"] == sid] == ["l2"]
        # freeze and thaw through the backend, as the user (escalation freezes the lower session)
        events = cgroups.path_of(box) / "cgroup.events"
        snippet = (
            "import sys; from posture import runner; from posture.session import SessionStore; "
            f"s = runner.reopen(SessionStore().get({sid!r})); s.freeze(); print(open({str(events)!r}).read()); "
            f"s.thaw(); print(open({str(events)!r}).read())"
        )
        venv_python = str(Path(os.path.realpath(POSTURE)).parent / "python")
        r = subprocess.run(["runuser", "-u", "posture-test", "--", "env", "-i", *[f"{k}={v}" for k, v in l2.env().items()],
                            venv_python, "-c", snippet], capture_output=True, text=True, cwd=str(project))
        assert r.returncode == 0, r.stderr
        frozen, thawed = r.stdout.split("\n\n", 1)
        assert "frozen 1" in frozen and "frozen 0" in thawed, r.stdout
        assert l2.posture("exec", "--session", sid, "--", "true").returncode == 0
    finally:
        r = l2.posture("down", "--session", sid)
    assert r.returncode == 0, r.stderr
    assert l2.settled()
    assert _user_pids("sleep 10000") == []


def test_claude_code_cli_runs_with_its_own_state(l2: L2) -> None:
    claude = shutil.which("claude")
    assert claude, "the Claude Code CLI is missing: scripts/install-deps installs @anthropic-ai/claude-code (scripts/deps/l2.npm)"
    project = l2.make_project("claude")
    r = l2.posture("exec", str(project), "--level", "l2", "--profile", "claude-code", "--", "claude", "--version")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Claude Code" in r.stdout
    r = l2.posture("exec", str(project), "--level", "l2", "--profile", "claude-code", "--", "sh", "-c", "ls -a ~/.claude/projects; cat ~/.claude.json")
    assert r.returncode == 0, r.stderr
    assert "-other-project" not in r.stdout and l2.canary not in r.stdout


def test_doctor_reports_l2(l2: L2) -> None:
    r = l2.posture("doctor", "--json")
    assert r.returncode == 0, r.stderr
    rows = [row for row in json.loads(r.stdout) if row.get("backend") == "bwrap"]
    by = {row["check"]: row for row in rows}
    for check in ("bwrap", "user namespaces", "seccomp filter", "slirp4netns", "cgroup v2", "network helper"):
        assert by[check]["ok"], by[check]
    assert "rule loaded for cgroup id" in by["network helper"]["detail"]
    r = l2.posture("doctor", "--json", POSTURE_NETD_SOCKET=str(l2.home / "none.sock"))
    by = {row["check"]: row for row in json.loads(r.stdout) if row.get("backend") == "bwrap"}
    assert not by["network helper"]["ok"] and "posture setup" in by["network helper"]["fix"]


def test_setup_and_remove_in_a_network_namespace(l2: L2, tmp_path: Path) -> None:
    """Root's `posture setup` under `ip netns exec` (whose fresh /sys has no cgroup mounts), then a user session, then --remove."""
    rundir = Path(f"/run/posture-setup-{os.getpid()}")
    sock = str(rundir / "netd.sock")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path), "POSTURE_NETD_SOCKET": sock,
           "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    setup = ["ip", "netns", "exec", l2.net.gw, POSTURE, "setup"]
    try:
        r = subprocess.run(setup, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "rule loaded for cgroup id" in r.stderr
        r = subprocess.run(setup, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "already running" in r.stderr, r.stderr
        project = l2.make_project("setup")
        reach = f"import socket; print(socket.create_connection(('{PUBLIC}', {PORT}), timeout=3).recv(64).decode())"
        r = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "python3", "-c", reach, POSTURE_NETD_SOCKET=sock)
        assert r.returncode == 0 and "hello from" in r.stdout, r.stderr
    finally:
        r = subprocess.run([*setup, "--remove"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not Path(sock).exists()
    assert "posture" not in in_ns(l2.net.gw, "nft", "list", "tables").stdout.split()
    shutil.rmtree(rundir, ignore_errors=True)
