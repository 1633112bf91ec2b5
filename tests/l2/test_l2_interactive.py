"""`posture up` at L2 on a real terminal: the agent gets a pty made inside the sandbox (the
user's terminal is never its controlling tty), the window size comes along, and the session
ends with the agent. Worktrees: the agent can commit, the real hooks stay read-only."""

from __future__ import annotations

import json
import os
import pty
import subprocess

import pytest
from support import read_until
from l2env import L2, POSTURE, USER

pytestmark = [pytest.mark.root, pytest.mark.l2]


def test_up_attaches_a_terminal_and_ends_with_the_agent(l2: L2) -> None:
    project = l2.make_project("interactive")
    env = [f"{k}={v}" for k, v in l2.env(COLUMNS="123", LINES="37").items()]
    pid, fd = pty.fork()
    if pid == 0:  # child: the user's terminal is this pty
        import fcntl
        import struct
        import termios

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 123, 0, 0))
        os.chdir(str(project))
        os.execvp("runuser", ["runuser", "-u", USER, "--", "env", "-i", *env, POSTURE, "up", "--level", "l2", "--profile", "shell"])
    try:
        read_until(fd, b"$", timeout=60)
        os.write(fd, b"echo tty=$(tty) size=$(stty size) level=$POSTURE_LEVEL; echo done-$((6*7))\r")
        out = read_until(fd, b"done-42", timeout=60)
        assert b"done-42" in out, out
        text = out.decode(errors="replace")
        assert "level=l2" in text and "size=36 123" in text  # tmux keeps one row for its status line
        assert "tty=/dev/pts/" in text  # a pty of the sandbox's own devpts
        os.write(fd, b"exit\r")
        read_until(fd, b"\x00", timeout=30)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.close(fd)
    listed = json.loads(l2.posture("status", "--json").stdout)
    mine = [s for s in listed if s["project"] == str(project)]
    assert mine and all(s["status"] == "stopped" for s in mine), mine
    assert l2.settled()


def test_worktree_commits_but_its_hooks_stay_read_only(l2: L2) -> None:
    main = l2.make_project("wt-main")
    tree = l2.home / "projects" / "wt-side"
    subprocess.run(["runuser", "-u", USER, "--", "git", "-C", str(main), "worktree", "add", "-q", str(tree), "-b", "side"], check=True)
    script = (
        "set -e; echo work > w.txt; git add w.txt; git -c user.email=a@b -c user.name=a commit -qm w; "
        f"if echo x > {main}/.git/hooks/post-checkout 2>/dev/null; then echo HOOK-WRITTEN; fi; "
        f"if echo x > {main}/.git/config 2>/dev/null; then echo CONFIG-WRITTEN; fi; "
        "if echo gitdir: /tmp/evil > .git 2>/dev/null; then echo POINTER-WRITTEN; fi; echo ok"
    )
    proc = l2.posture("exec", str(tree), "--level", "l2", "--profile", "shell", "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "ok" and "WRITTEN" not in proc.stdout, proc.stdout
    log = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(main), "log", "--format=%s", "side"], capture_output=True, text=True).stdout
    assert log.splitlines()[0] == "w"
    assert not (main / ".git" / "hooks" / "post-checkout").exists()
