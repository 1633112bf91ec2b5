"""`posture up --level l3` on a real terminal: the agent gets a pty made inside the guest,
the window size comes along, and the session (and its VM) ends with the agent."""

from __future__ import annotations

import json
import os
import pty

import pytest
from l3env import L3, wait_for

from support import read_until

pytestmark = [pytest.mark.root, pytest.mark.l3]


def test_up_attaches_a_terminal_and_ends_with_the_agent(l3: L3) -> None:
    project = l3.make_project("interactive")
    argv = l3.argv("up", "--level", "l3", "--profile", "shell", COLUMNS="123", LINES="37")  # as the ordinary user
    pid, fd = pty.fork()
    if pid == 0:  # child: the user's terminal is this pty
        import fcntl
        import struct
        import termios

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 123, 0, 0))
        os.chdir(str(project))
        os.execvp(argv[0], argv)
    try:
        first = read_until(fd, (b"# ", b"$ "), timeout=180)
        assert b"# " in first or b"$ " in first, first[-2000:]
        os.write(fd, b"echo tty=$(tty) size=$(stty size) level=$POSTURE_LEVEL; echo done-$((6*7))\r")
        out = read_until(fd, (b"done-42",), timeout=60)
        assert b"done-42" in out, out
        text = out.decode(errors="replace")
        assert "level=l3" in text and "size=36 123" in text, text  # tmux keeps one row for its status line
        assert "tty=/dev/pts/" in text, text  # a pty of the guest's own devpts
        os.write(fd, b"exit\r")
        read_until(fd, (b"\x00",), timeout=60)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.close(fd)
    listed = json.loads(l3.posture("status", "--json").stdout)
    mine = [s for s in listed if s["project"] == str(project)]
    assert mine and all(s["status"] == "stopped" for s in mine), mine
    assert wait_for(lambda: l3.domains() == [], 30), l3.domains()
