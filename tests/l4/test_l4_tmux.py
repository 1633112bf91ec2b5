"""The agent runs in tmux on the host: up --detach, exec --session, attach on a terminal, down."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import read_until

import os
import pty
import subprocess
import time

from l4.l4env import posture_bin


pytestmark = pytest.mark.l4


def remote_tmux_alive(l4, sid: str) -> bool:
    return l4.remote("tmux", "-L", f"posture-{sid}", "has-session", "-t", "agent").returncode == 0


def test_up_detach_exec_attach_down(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo()
    agent = "echo agent-started > started.txt; echo agent-says-hello; exec sleep 600"
    proc = l4.posture("up", "--level", "l4", "--detach", "--", "sh", "-c", agent, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    sid = proc.stdout.strip()
    status = {s["id"]: s for s in l4.sessions()}[sid]
    assert status["level"] == "l4" and status["backend"] == "tailnet" and status["status"] == "running"
    assert remote_tmux_alive(l4, sid)
    # the generic tmux server name is not used: each session has its own on the shared host
    assert l4.remote("tmux", "-L", "posture", "has-session", "-t", "agent").returncode != 0

    for _ in range(50):
        got = l4.posture("exec", "--session", sid, "--", "cat", "started.txt")
        if got.returncode == 0:
            break
        time.sleep(0.2)
    assert got.returncode == 0 and got.stdout == "agent-started\n", got.stderr

    # attach on a real terminal, see the agent's screen, detach with C-b d
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.clear()
        os.environ.update({**l4.env, "TERM": "xterm"})
        os.chdir(repo)
        os.execvp("ip", ["ip", "netns", "exec", l4.net.gw, posture_bin(), "attach", "--session", sid])
    try:
        screen = read_until(fd, b"agent-says-hello")
        assert b"agent-says-hello" in screen, screen[-2000:]
        os.write(fd, b"\x02d")
        rest = read_until(fd, b"[detached", timeout=15)
        _, wstatus = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wstatus) == 0, rest[-2000:]
    finally:
        os.close(fd)
    assert remote_tmux_alive(l4, sid), "detaching must leave the agent running"

    worktree = l4.vps.home / l4.workdir / "sessions" / sid
    assert worktree.is_dir()
    proc = l4.posture("down", "--session", sid)
    assert proc.returncode == 0, proc.stderr
    assert not remote_tmux_alive(l4, sid)
    assert not worktree.exists()
    bare = next((l4.vps.home / l4.workdir / "repos").iterdir())
    refs = subprocess.run(["git", "--git-dir", str(bare), "for-each-ref", "--format=%(refname)"], capture_output=True, text=True).stdout
    assert f"refs/posture/{sid}/work" in refs  # the work is kept on the host for `posture pull`
    pulled = l4.posture("pull", "--session", sid, cwd=repo)
    assert pulled.returncode == 0, pulled.stderr
    assert "started.txt" in pulled.stdout


def test_two_sessions_share_the_host_without_colliding(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo()
    ids = []
    for word in ("one", "two"):
        proc = l4.posture("up", "--level", "l4", "--detach", "--", "sh", "-c", f"echo {word} > who.txt; exec sleep 600", cwd=repo)
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.strip())
    time.sleep(1)
    for sid, word in zip(ids, ("one", "two")):
        got = l4.posture("exec", "--session", sid, "--", "cat", "who.txt")
        assert got.stdout == f"{word}\n", got.stderr
        assert remote_tmux_alive(l4, sid)
    assert l4.posture("down", "--session", ids[0]).returncode == 0
    assert not remote_tmux_alive(l4, ids[0]) and remote_tmux_alive(l4, ids[1])
    assert l4.posture("down", "--all").returncode == 0
    assert not remote_tmux_alive(l4, ids[1])


def test_doctor_reports_l4(l4) -> None:
    import json

    before = json.loads(l4.posture("doctor", "--json").stdout)
    rows = {r["check"]: r for r in before if r["level"] == "l4"}
    assert rows["host key pinned"]["ok"] is False and "enroll" in rows["host key pinned"]["fix"]
    l4.enroll()
    after = json.loads(l4.posture("doctor", "--json").stdout)
    rows = {r["check"]: r for r in after if r["level"] == "l4"}
    for name in ("config", "identity", "tailscale CLI", "peer", "host key pinned", "ssh login", "git on host", "tmux on host", "GNU tar and coreutils on host"):
        assert rows[name]["ok"], rows[name]
    agent = [r for name, r in rows.items() if name.startswith("agent on host")]
    assert agent and agent[0]["ok"], rows
    # a profile whose agent the host does not have: doctor says so, with the fix
    profiles = Path(l4.user.env["XDG_CONFIG_HOME"]) / "posture" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "ghost.toml").write_text('description = "an agent the host lacks"\ncommand = ["posture-no-such-agent"]\n')
    config = l4.user.config_file.read_text()
    l4.user.write_config('profile = "ghost"\n' + "\n".join(line for line in config.splitlines() if not line.startswith("profile")) + "\n")
    rows = {r["check"]: r for r in json.loads(l4.posture("doctor", "--json").stdout) if r["level"] == "l4"}
    ghost = rows["agent on host (ghost)"]
    assert ghost["ok"] is False and "posture-no-such-agent" in ghost["detail"] and "install" in ghost["fix"], ghost
    l4.user.write_config(config)
    l4.scenario(Online=False)
    rows = {r["check"]: r for r in json.loads(l4.posture("doctor", "--json").stdout) if r["level"] == "l4"}
    assert rows["peer"]["ok"] is False and "offline" in rows["peer"]["detail"]
    # the user's general key is flagged: L4 wants a key made for that host only
    general = l4.home / ".ssh" / "id_ed25519"
    general.parent.mkdir(mode=0o700)
    general.write_bytes(l4.vps.client_key.read_bytes())
    l4.user.write_config(l4.user.config_file.read_text().replace(str(l4.vps.client_key), str(general)))
    rows = {r["check"]: r for r in json.loads(l4.posture("doctor", "--json").stdout) if r["level"] == "l4"}
    assert rows["identity"]["ok"] is False and "general SSH key" in rows["identity"]["detail"]


def test_up_attached_ends_with_the_agent(l4, make_repo) -> None:
    """`posture up --level l4` on a terminal shows the agent; when the agent exits the session is torn down."""
    l4.enroll()
    repo = make_repo()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.clear()
        os.environ.update({**l4.env, "TERM": "xterm"})
        os.chdir(repo)
        os.execvp("ip", ["ip", "netns", "exec", l4.net.gw, posture_bin(), "up", "--level", "l4", "--",
                         "sh", "-c", "echo agent-on-screen; echo work > made-by-agent.txt; sleep 2"])
    try:
        screen = read_until(fd, b"agent-on-screen", timeout=60)
        assert b"agent-on-screen" in screen, screen[-2000:]
        read_until(fd, b"\x00", timeout=30)  # until the terminal closes
        _, wstatus = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wstatus) == 0
    finally:
        os.close(fd)
    sessions = [s for s in l4.sessions() if s["backend"] == "tailnet"]
    assert sessions[-1]["status"] == "stopped", sessions[-1]
    sid = sessions[-1]["id"]
    assert not remote_tmux_alive(l4, sid)
    assert not (l4.vps.home / l4.workdir / "sessions" / sid).exists()
    pulled = l4.posture("pull", "--session", sid, cwd=repo)
    assert pulled.returncode == 0 and "made-by-agent.txt" in pulled.stdout, pulled.stderr
