"""The exec channel's agents and client (the protocol both L2 and L3 use).

Each behaviour runs against the Python agent on a unix socket (as L2 serves it) and against
the native agent behind the L3 mux, with a socket pair standing in for the virtio-serial
port (QEMU's side of it is a unix socket the mux connects to).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from posture import channel
from posture.l3 import guestagent
from posture.l3.mux import Mux


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass


def _port_stand_in(path: Path, guest_end: socket.socket) -> None:
    """QEMU's side of a virtio-serial port: one unix client, relayed to the guest's end."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        threading.Thread(target=_pump, args=(guest_end, conn), daemon=True).start()
        _pump(conn, guest_end)

    threading.Thread(target=serve, daemon=True).start()


@pytest.fixture(scope="module")
def native_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """guest/agent.c built as L3 builds it (a real C compiler is part of the test setup)."""
    return guestagent.build_native(tmp_path_factory.mktemp("native-agent"))


@pytest.fixture(params=["python", "native"])
def agent(request: pytest.FixtureRequest, tmp_path: Path):
    sock = tmp_path / "agent.sock"
    if request.param == "python":
        proc = subprocess.Popen([sys.executable, "-I", str(channel.GUEST_DIR / "agent.py"), "--listen", str(sock)])
        yield sock
        proc.kill()
        proc.wait()
        return
    host_end, guest_end = socket.socketpair()
    proc = subprocess.Popen([str(request.getfixturevalue("native_agent")), "--fd", str(guest_end.fileno())], pass_fds=(guest_end.fileno(),))
    guest_end.close()
    _port_stand_in(tmp_path / "chan", host_end)
    mux = Mux(str(tmp_path / "chan"), str(sock))
    mux.start()
    assert mux.wait_ready(10), "the native agent did not greet"
    yield sock
    mux.close()
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


def test_exec_failures_are_reported(agent: Path, tmp_path: Path) -> None:
    script = "import sys; from posture import channel; sys.exit(channel.run(channel.connect_unix(sys.argv[1]), sys.argv[3:], env={'PATH': '/usr/bin:/bin'}, cwd=sys.argv[2], tty=False))"
    missing = subprocess.run([sys.executable, "-c", script, str(agent), "/", "no-such-command-anywhere"], capture_output=True, text=True)
    assert missing.returncode == 127 and "no-such-command-anywhere" in missing.stderr, missing.stderr
    nocwd = subprocess.run([sys.executable, "-c", script, str(agent), str(tmp_path / "gone"), "true"], capture_output=True, text=True)
    assert nocwd.returncode in (126, 127) and "gone" in nocwd.stderr, nocwd.stderr
    notexec = tmp_path / "plain.txt"
    notexec.write_text("x")
    denied = subprocess.run([sys.executable, "-c", script, str(agent), "/", str(notexec)], capture_output=True, text=True)
    assert denied.returncode == 126, denied.stderr


def test_env_is_exactly_what_was_sent_and_odd_bytes_survive(agent: Path, tmp_path: Path) -> None:
    """The command sees only the environment sent, and names that are not UTF-8 arrive unchanged."""
    odd = os.fsdecode(b"caf\xe9-\xf0\x9f\x90\x8d")
    target = tmp_path / odd
    code, out, _ = run(agent, ["sh", "-c", 'env | sort; printf x > "$1"', "sh", str(target)], tmp=tmp_path)
    assert code == 0
    assert set(out.decode().split()) - {"PWD=/"} == {"PATH=/usr/bin:/bin", "X=1"}, out  # sh adds PWD itself
    assert target.read_bytes() == b"x"


def test_signal_and_resize_reach_the_command(agent: Path, tmp_path: Path) -> None:
    """SIGTERM forwarded by the client ends the command as 128+15."""
    script = ("import sys; from posture import channel; "
              "sys.exit(channel.run(channel.connect_unix(sys.argv[1]), ['sh', '-c', 'echo up; sleep 30'], env=None, cwd='/', tty=False))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(agent)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.terminate()
    assert proc.wait(timeout=20) == 128 + 15


def test_malformed_requests_get_an_error_and_the_agent_goes_on(agent: Path) -> None:
    """Broken OPEN payloads are answered with a non-zero EXIT; the same connection then runs a command."""
    import json

    from posture.guest import wire

    bad = [b"{not json", b'["argv"]', b'{"argv": "sh"}', b'{"argv": ["true"], "env": {"A": ' + b"[" * 200 + b"]" * 200 + b"}}",
           b'{"argv": ["true"], "cwd": "/\\u0000x"}', b'{"argv": ["tr\\ud800ue"]}', b'{"argv": []}', b""]
    sock = channel.connect_unix(agent)
    sock.settimeout(20)
    reader = wire.Reader()
    for stream, payload in enumerate(bad, start=1):
        sock.sendall(wire.pack(stream, wire.OPEN, payload))
    sock.sendall(wire.pack_json(len(bad) + 1, wire.OPEN, {"argv": ["sh", "-c", "echo fine"], "env": {"PATH": "/usr/bin:/bin"}, "cwd": "/", "tty": False}))
    sock.sendall(wire.pack(len(bad) + 1, wire.STDIN_EOF))
    exits: dict[int, int] = {}
    out = b""
    while len(exits) < len(bad) + 1:
        data = sock.recv(65536)
        assert data, f"the agent closed the connection; exits so far {exits}"
        for stream, kind, payload in reader.feed(data):
            if kind == wire.EXIT:
                exits[stream] = json.loads(payload)["code"]
            elif kind == wire.STDOUT:
                out += payload
    sock.close()
    assert {s: c for s, c in exits.items() if c == 0} == {len(bad) + 1: 0}, exits
    assert exits[len(bad) + 1] == 0 and out == b"fine\n", (exits, out)
