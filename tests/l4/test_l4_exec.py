"""`posture exec --level l4`: exit codes, separate streams, stdin; and nothing of the user's reaches the host."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from l4.vps import LOGIN_ENV_DIR


pytestmark = pytest.mark.l4


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_codes_and_separate_streams(l4, make_repo, code: int) -> None:
    l4.enroll()
    repo = make_repo()
    script = f"echo to-stdout; echo to-stderr >&2; printf 'line2\\n'; exit {code}"
    proc = l4.posture("exec", "--level", "l4", "--", "sh", "-c", script, cwd=repo)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "to-stdout\nline2\n"
    assert "to-stderr" in proc.stderr and "to-stderr" not in proc.stdout


def test_signal_exit_stdin_and_cwd(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo(files={"data.txt": "from the project\n"})
    proc = l4.posture("exec", "--level", "l4", "--", "sh", "-c", "kill -TERM $$", cwd=repo)
    assert proc.returncode == 128 + 15, proc.stderr
    proc = l4.posture("exec", "--level", "l4", "--", "sh", "-c", "tr a-z A-Z; cat data.txt; pwd", cwd=repo, input="piped in\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[:2] == ["PIPED IN", "from the project"]
    assert out[2].startswith(f"{l4.vps.home}/{l4.workdir}/sessions/")


PROBE = r"""
import glob, json, os
print(json.dumps({"env": dict(os.environ), "agent_dirs": glob.glob("/tmp/ssh-*"), "ssh_dir": os.listdir(os.path.expanduser("~/.ssh")) if os.path.isdir(os.path.expanduser("~/.ssh")) else []}))
"""


def test_no_agent_no_secrets_no_user_env_reach_the_host(l4, make_repo, tmp_path: Path) -> None:
    l4.enroll()
    repo = make_repo()
    # A real ssh-agent holding the very key the host accepts, as on a developer's laptop.
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if agent_sock.exists():
                break
            __import__("time").sleep(0.05)
        add = subprocess.run(["ssh-add", str(l4.vps.client_key)], env={"SSH_AUTH_SOCK": str(agent_sock), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
        assert add.returncode == 0, add.stderr
        l4.user.write_config(l4.user.config_file.read_text().replace("[l4]", '[env]\npass = ["MY_API_TOKEN", "PROJECT_COLOR"]\n\n[l4]'))
        record = l4.vps.home / LOGIN_ENV_DIR
        subprocess.run(["install", "-d", "-o", l4.vps.user, str(record)], check=True)
        env = {
            "SSH_AUTH_SOCK": str(agent_sock),
            "MY_API_TOKEN": "sk-secret-value-1234",
            "AWS_SECRET_ACCESS_KEY": "aws-secret-value-5678",
            "PROJECT_COLOR": "teal",  # allowlisted and harmless: the control that env does travel
            "UNLISTED_VAR": "not-allowlisted",
            "LC_ALL": "C.UTF-8",
        }
        proc = l4.posture("exec", "--level", "l4", "--", "python3", "-c", PROBE, cwd=repo, env=env)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
        remote_env = seen["env"]
        # controls: allowlisted values travel, posture's own variables are set, HOME is the project's agent state home on the host
        assert remote_env["PROJECT_COLOR"] == "teal" and remote_env["LANG"] == "C.UTF-8"
        assert remote_env["POSTURE_LEVEL"] == "l4" and remote_env["POSTURE_SESSION"]
        assert remote_env["HOME"].startswith(f"{l4.vps.home}/{l4.workdir}/state/") and remote_env["HOME"].endswith("/shell/home")
        # the promise, from the command's side
        for name in ("SSH_AUTH_SOCK", "MY_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "UNLISTED_VAR", "XDG_STATE_HOME", "SSH_CONNECTION", "SSH_CLIENT"):
            assert name not in remote_env, name
        assert "sk-secret" not in proc.stdout and "aws-secret" not in proc.stdout
        # ...and from sshd's side: what the server handed each login of this session (AcceptEnv *, agent forwarding allowed)
        logins = [p for p in record.iterdir() if not p.name.endswith(".agentdirs")]
        assert logins, "the host recorded no login"
        for login in logins:
            text = login.read_text()
            names = {line.split("=", 1)[0] for line in text.splitlines() if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line)}
            assert "SSH_CONNECTION" in names  # the recorder saw sshd's environment
            assert "sk-secret" not in text and "aws-secret" not in text  # not even inside the command line
            # nothing is sent with SSH "env" requests, and no agent was forwarded
            assert not names & {"SSH_AUTH_SOCK", "PROJECT_COLOR", "LC_ALL", "LANG", "MY_API_TOKEN", "UNLISTED_VAR"}, names
        assert not any(p.read_text().strip() for p in record.glob("*.agentdirs")), "sshd created an agent socket"
        assert seen["agent_dirs"] == []
    finally:
        agent.terminate()
        agent.wait()
        shutil.rmtree(l4.vps.home / LOGIN_ENV_DIR, ignore_errors=True)


def test_only_posture_identity_and_no_ssh_config_are_used(l4, make_repo) -> None:
    """A hostile ~/.ssh/config (ProxyCommand, other identity, agent) is never read."""
    l4.enroll()
    ssh_dir = l4.home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    marker = l4.home / "proxycommand-ran"
    (ssh_dir / "config").write_text(f"Host *\n  ProxyCommand sh -c 'touch {marker}; exit 1'\n  ForwardAgent yes\n  IdentityFile ~/.ssh/other\n")
    (ssh_dir / "known_hosts").write_text(f"[{l4.vps.ip}]:{l4.vps.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJunkJunkJunkJunkJunkJunkJunkJunkJunkJunkJunk\n")
    proc = l4.posture("exec", "--level", "l4", "--", "true", cwd=make_repo())
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()


def _start(l4, repo: Path, *argv: str) -> subprocess.Popen:
    from l4.l4env import posture_bin

    return subprocess.Popen(["ip", "netns", "exec", l4.net.gw, posture_bin(), "exec", "--level", "l4", "--", *argv],
                            cwd=repo, env=l4.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_signals_reach_the_remote_command(l4, make_repo) -> None:
    """Ctrl-C / SIGTERM on `posture exec` (no tty) reach the command on the host; its code comes back."""
    import signal

    l4.enroll()
    repo = make_repo()
    proc = _start(l4, repo, "sh", "-c", 'trap "echo got-int; exit 9" INT; echo ready; while :; do sleep 0.1; done')
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 9 and out == "got-int\n", (proc.returncode, out, err)

    proc = _start(l4, repo, "sh", "-c", "echo ready; exec sleep 617")
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    # nothing of it is left running on the host
    assert l4.remote("pgrep", "-u", l4.vps.user, "-f", "sleep 617").returncode != 0


def test_large_stdin_and_stdout_at_once(l4, make_repo, tmp_path: Path) -> None:
    """Piping data through a remote filter: both directions full at once must not deadlock."""
    import hashlib

    l4.enroll()
    blob = os.urandom(12 * 1024 * 1024)
    src = tmp_path / "blob"
    src.write_bytes(blob)
    from l4.l4env import posture_bin

    with open(src, "rb") as stdin:
        proc = subprocess.run(["ip", "netns", "exec", l4.net.gw, posture_bin(), "exec", "--level", "l4", "--", "cat"],
                              cwd=make_repo(), env=l4.env, stdin=stdin, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(proc.stdout).hexdigest() == hashlib.sha256(blob).hexdigest()


def test_tty_mode_ctrl_c_reaches_the_command_and_its_code_comes_back(l4, make_repo) -> None:
    import pty
    import select
    import time

    from l4.l4env import posture_bin

    l4.enroll()
    repo = make_repo()
    script = 'trap "echo caught-ctrl-c; exit 5" INT; test -t 0 && echo tty-ok; while :; do sleep 0.1; done'
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.clear()
        os.environ.update({**l4.env, "TERM": "xterm"})
        os.chdir(repo)
        os.execvp("ip", ["ip", "netns", "exec", l4.net.gw, posture_bin(), "exec", "--level", "l4", "--", "sh", "-c", script])
    buf = b""
    try:
        deadline = time.monotonic() + 60
        sent = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
            if b"tty-ok" in buf and not sent:
                os.write(fd, b"\x03")  # a byte through the raw local terminal; the host's pty makes it SIGINT
                sent = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert b"caught-ctrl-c" in buf, buf
    assert os.waitstatus_to_exitcode(status) == 5, buf
