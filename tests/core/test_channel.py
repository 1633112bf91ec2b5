"""The exec channel's agent and client over a unix socket (the protocol both L2 and L3 use)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posture import channel


@pytest.fixture
def agent(tmp_path: Path):
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen([sys.executable, "-I", str(channel.GUEST_DIR / "agent.py"), "--listen", str(sock)])
    yield sock
    proc.kill()
    proc.wait()


def run(sock: Path, argv: list[str], stdin: bytes = b"", tty: bool = False, tmp: Path | None = None) -> tuple[int, bytes, bytes]:
    r, w = os.pipe()
    os.write(w, stdin)
    os.close(w)
    out_path, err_path = (tmp or Path("/tmp")) / "out", (tmp or Path("/tmp")) / "err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        code = channel.run(channel.connect_unix(sock), argv, env={"PATH": "/usr/bin:/bin", "X": "1"}, cwd="/", tty=tty, stdin=r, stdout=out.fileno(), stderr=err.fileno())
    os.close(r)
    return code, out_path.read_bytes(), err_path.read_bytes()


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_codes_and_separate_streams(agent: Path, tmp_path: Path, code: int) -> None:
    got, out, err = run(agent, ["sh", "-c", f"echo out; echo err >&2; exit {code}"], tmp=tmp_path)
    assert (got, out, err) == (code, b"out\n", b"err\n")


def test_killed_by_signal_is_128_plus_n(agent: Path, tmp_path: Path) -> None:
    assert run(agent, ["sh", "-c", "kill -9 $$"], tmp=tmp_path)[0] == 137


def test_stdin_env_and_large_output(agent: Path, tmp_path: Path) -> None:
    code, out, _ = run(agent, ["sh", "-c", "cat; echo X=$X; head -c 3000000 /dev/zero | tr '\\0' a"], stdin=b"in\n", tmp=tmp_path)
    assert code == 0 and out.startswith(b"in\nX=1\n") and out.count(b"a") == 3000000


def test_missing_command_is_127(agent: Path, tmp_path: Path) -> None:
    code, _, _ = run(agent, ["no-such-command-anywhere"], tmp=tmp_path)
    assert code == 127


def test_tty_mode_gives_a_pty_that_is_the_controlling_terminal(agent: Path, tmp_path: Path) -> None:
    code, out, _ = run(agent, ["sh", "-c", "test -t 0 && test -t 1 && ps -o tty= -p $$ && stty size"], tty=True, tmp=tmp_path)
    assert code == 0
    text = out.decode()
    assert "pts/" in text and "24 80" in text


def test_two_commands_at_once(agent: Path, tmp_path: Path) -> None:
    """The first command only ends once the second has run: they must run side by side."""
    flag = tmp_path / "flag"
    waiter = f"for i in $(seq 200); do [ -e {flag} ] && exit 0; sleep 0.05; done; exit 9"
    script = "import sys; from posture import channel; sys.exit(channel.run(channel.connect_unix(sys.argv[1]), sys.argv[2:], env=None, cwd='/', tty=False))"
    first = subprocess.Popen([sys.executable, "-c", script, str(agent), "sh", "-c", waiter])
    second = subprocess.Popen([sys.executable, "-c", script, str(agent), "touch", str(flag)])
    assert second.wait(timeout=30) == 0
    assert first.wait(timeout=30) == 0
