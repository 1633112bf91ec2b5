"""Pinned SSH to the L4 host with paramiko, and running commands there.

Nothing of the user's goes along: no agent (allow_agent=False, no forwarding), no key
but `[l4] identity` (look_for_keys=False), no ~/.ssh/config or ~/.ssh/known_hosts (only
posture's own known_hosts, RejectPolicy for anything else), and no environment: every
remote command runs under `env -i` with exactly the variables posture chose.
"""

from __future__ import annotations

import errno
import os
import select
import shlex
import signal
import socket
import sys
import termios
import threading
import tty as ttymod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Refused, Unavailable, UsageError
from . import hostkeys

CONNECT_TIMEOUT = 20.0


@dataclass(frozen=True)
class Target:
    """Where and as whom to log in."""

    name: str  # what the user configured / the peer's MagicDNS name, for messages
    ip: str
    port: int
    user: str
    identity: str
    known_hosts: str

    @property
    def entry(self) -> str:
        """This host's name in known_hosts."""
        return hostkeys.host_entry(self.ip, self.port)


def settings_l4(settings: Any) -> dict[str, Any]:
    """The `[l4]` table of the user's config ({} when absent)."""
    return dict(settings.backend.get("l4") or {})


def require(l4: dict[str, Any], key: str) -> Any:
    """A required `[l4]` key, or a usage error naming it."""
    value = l4.get(key)
    if not value:
        examples = {"host": '"vps" (a tailnet peer)', "user": '"agent"', "identity": '"~/.ssh/posture_l4" (a key made for this host only)'}
        from .. import paths

        raise UsageError(f"[l4] {key} is not set in the user config", fix=f"add `{key} = {examples.get(key, '...')}` under [l4] in {paths.user_config_file()}")
    return value


def target_for(l4: dict[str, Any], ip: str, name: str) -> Target:
    """The login target from `[l4]` and the peer's address."""
    identity = str(Path(str(require(l4, "identity"))).expanduser())
    if not os.path.isfile(identity):
        raise Unavailable(f"[l4] identity {identity} does not exist", fix=f"create it with `ssh-keygen -t ed25519 -N '' -f {identity}` and authorise its .pub on the host")
    return Target(
        name=name,
        ip=ip,
        port=int(l4.get("port") or 22),
        user=str(require(l4, "user")),
        identity=identity,
        known_hosts=str(hostkeys.known_hosts_file()),
    )


def import_paramiko():
    """Import paramiko without `invoke`, which paramiko loads (when installed) only for ProxyCommand
    from an SSH config, which posture never reads: a tenth of a second saved per process."""
    sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
    import paramiko  # noqa: PLC0415 - imported lazily: every posture call loads all backends

    return paramiko


def _paramiko():
    try:
        paramiko = import_paramiko()
    except ImportError:
        raise Unavailable("paramiko is not installed", fix="pip install 'posture[l4]'") from None
    return paramiko


def connect(t: Target):
    """An authenticated paramiko SSHClient whose host key matched the pin (exit 69/77 otherwise)."""
    paramiko = _paramiko()
    if not hostkeys.read_pins(t.entry, Path(t.known_hosts)):
        raise Unavailable(f"no host key is pinned for {t.name} ({t.entry})", fix="run `posture l4 enroll`")
    client = paramiko.SSHClient()
    client.load_host_keys(t.known_hosts)  # posture's file only; never the system's or ~/.ssh/known_hosts
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            hostname=t.ip,
            port=t.port,
            username=t.user,
            key_filename=t.identity,
            allow_agent=False,
            look_for_keys=False,
            timeout=CONNECT_TIMEOUT,
            banner_timeout=CONNECT_TIMEOUT,
            auth_timeout=CONNECT_TIMEOUT,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        got = hostkeys.HostKey(exc.key.get_name(), exc.key.get_base64()).fingerprint()
        raise Refused(
            f"host key of {t.name} ({t.entry}) changed: it presented {got}, which is not the pinned key; refused",
            fix="if the host was really reinstalled, check its new key out of band, then run `posture l4 enroll`",
        ) from None
    except paramiko.PasswordRequiredException:
        client.close()
        raise Unavailable(f"[l4] identity {t.identity} is encrypted", fix="use a key without passphrase made for this host only") from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise Unavailable(
            f"{t.user}@{t.name} ({t.ip}:{t.port}) refused the key {t.identity}: {exc}",
            fix=f"add {t.identity}.pub to ~{t.user}/.ssh/authorized_keys on the host",
        ) from None
    except paramiko.SSHException as exc:
        client.close()
        text = str(exc)
        if "not found in known_hosts" in text:
            raise Unavailable(f"host key of {t.name} ({t.entry}) is not pinned", fix="run `posture l4 enroll`") from None
        if "host key" in text.lower():
            raise Refused(f"{t.name} ({t.entry}) offered no host key of the pinned type: {text}; refused", fix="check the host's keys out of band, then run `posture l4 enroll`") from None
        raise Unavailable(f"SSH to {t.name} ({t.ip}:{t.port}) failed: {text}", fix="check sshd on the host and [l4] port") from None
    except (OSError, EOFError) as exc:
        client.close()
        raise Unavailable(f"cannot reach {t.name} at {t.ip}:{t.port}: {exc}", fix="check the host is up and sshd listens on [l4] port") from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(30)
    return client


def scan_host_key(ip: str, port: int) -> hostkeys.HostKey:
    """The host key `ip`:`port` presents (for `enroll` to show before pinning; nothing is trusted yet)."""
    paramiko = _paramiko()
    try:
        sock = socket.create_connection((ip, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise Unavailable(f"cannot reach {ip}:{port}: {exc}", fix="check the host is up and sshd listens on [l4] port") from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=CONNECT_TIMEOUT)
        key = transport.get_remote_server_key()
        return hostkeys.HostKey(key.get_name(), key.get_base64())
    except paramiko.SSHException as exc:
        raise Unavailable(f"SSH handshake with {ip}:{port} failed: {exc}", fix="check sshd on the host") from None
    finally:
        transport.close()


# The shell stays the command's parent (no exec), so a command killed by signal N exits 128+N,
# and it ignores INT/TERM/HUP/QUIT with a no-op trap so that it outlives them and reports the
# command's own status. The command starts with default handlers (traps reset on exec) and gets
# the signal itself: OpenSSH's sshd delivers an SSH "signal" request to the whole process group,
# and a pty delivers ^C to the foreground group.
WRAPPER = 'trap : INT TERM HUP QUIT; "$@"'
_WRAPPER = WRAPPER


def remote_command(argv: list[str], env: dict[str, str], cwd: str | None) -> str:
    """The command line for the remote login shell: `env -i` with exactly `env`, in `cwd`, then argv."""
    script = f'cd -- "$0" || exit 126; {_WRAPPER}' if cwd else _WRAPPER
    words = ["exec", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in sorted(env.items())), "/bin/sh", "-c", script, cwd or "sh", *argv]
    return " ".join(w if w == "exec" else shlex.quote(w) for w in words)


def send_signal(chan, name: str) -> None:
    """Ask the host to deliver signal `name` ("INT", "TERM", ...) to the channel's command (RFC 4254 6.9)."""
    from paramiko.common import cMSG_CHANNEL_REQUEST
    from paramiko.message import Message

    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string("signal")
    m.add_boolean(False)
    m.add_string(name)
    chan.transport._send_user_message(m)


SCRIPT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}


def run_script(client, script: str, timeout: float = 600.0, env: dict[str, str] | None = None, argv: list[str] | None = None,
               stdin: bytes = b"") -> tuple[int, str, str]:
    """Run a /bin/sh script on the host under `env -i` (PATH and LC_ALL only, unless `env`), with
    positional parameters `argv` ($1...) and `stdin` as its input; (exit code, stdout, stderr)."""
    chan = client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
    chan.settimeout(timeout)
    words = ["/bin/sh", "-c", script, "sh", *argv] if argv else ["/bin/sh", "-c", script]
    chan.exec_command(remote_command(words, env or SCRIPT_ENV, None))
    if stdin:
        chan.sendall(stdin)  # paramiko's transport thread keeps receiving meanwhile: no deadlock on output
    chan.shutdown_write()
    out, err = bytearray(), bytearray()
    while True:
        if chan.recv_ready():
            out += chan.recv(65536)
        elif chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        elif chan.exit_status_ready() and chan.eof_received:
            # drain what is left
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            break
        else:
            select.select([chan], [], [], 1.0)
    code = chan.recv_exit_status()
    chan.close()
    return code, out.decode(errors="replace"), err.decode(errors="replace")


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return False
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            if exc.errno == errno.EAGAIN:
                select.select([], [fd], [])
                continue
            raise
        view = view[n:]
    return True


def _term_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    except OSError:
        return 80, 24


def run_interactive(client, command: str, tty: bool, forward_stdin: bool = True) -> int:
    """Run `command` on the host with this process's stdio; return its exit code.

    Without a tty the remote stdout and stderr stay apart (fd 1 and fd 2 here) and INT/TERM/HUP
    received here are passed on as SSH signal requests; with one, the host allocates a pty, the
    local terminal goes raw (^C travels as a byte) and window size changes follow.
    """
    chan = client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
    stdin_fd = 0
    stdin_is_tty = tty and os.isatty(stdin_fd)
    saved_attrs = None
    old_winch = None
    if tty:
        cols, rows = _term_size()
        chan.get_pty(term=os.environ.get("TERM") or "xterm-256color", width=cols, height=rows)
    chan.exec_command(command)
    relayed: dict[signal.Signals, Any] = {}
    if not tty and threading.current_thread() is threading.main_thread():

        def forward(signo: int, _frame: object) -> None:
            try:
                send_signal(chan, signal.Signals(signo).name.removeprefix("SIG"))
            except Exception:  # noqa: BLE001 - the channel may be closing
                pass

        for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            relayed[signo] = signal.signal(signo, forward)
    try:
        if stdin_is_tty:
            saved_attrs = termios.tcgetattr(stdin_fd)
            ttymod.setraw(stdin_fd)

            def on_winch(_signo: int, _frame: object) -> None:
                w, h = _term_size()
                try:
                    chan.resize_pty(width=w, height=h)
                except Exception:  # noqa: BLE001 - the channel may be closing
                    pass

            old_winch = signal.signal(signal.SIGWINCH, on_winch)
        watch_stdin = forward_stdin
        if watch_stdin:
            try:
                os.fstat(stdin_fd)
            except OSError:
                watch_stdin = False
        if not forward_stdin:
            chan.shutdown_write()
        out_ok = err_ok = True
        pending = b""  # stdin read but not yet accepted by the channel's window
        while True:
            if chan.recv_ready():
                data = chan.recv(65536)
                out_ok = out_ok and _write_all(1, data)
                continue
            if chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err_ok = err_ok and _write_all(2, data)
                continue
            if chan.exit_status_ready() and (chan.eof_received or chan.closed):
                break
            if pending and chan.send_ready():
                # never block on the remote's window: it may be waiting for us to read its output
                pending = pending[chan.send(pending[:32768]):]
                if not pending and not watch_stdin:
                    chan.shutdown_write()
                continue
            read_stdin = watch_stdin and not pending
            rlist = [chan, stdin_fd] if read_stdin else [chan]
            try:
                ready, _, _ = select.select(rlist, [], [], 0.05 if pending else 1.0)
            except InterruptedError:
                continue
            if read_stdin and stdin_fd in ready:
                try:
                    data = os.read(stdin_fd, 65536)
                except OSError:
                    data = b""
                if data:
                    pending = data
                else:
                    watch_stdin = False
                    chan.shutdown_write()
        code = chan.recv_exit_status()
    finally:
        if saved_attrs is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved_attrs)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        for signo, previous in relayed.items():
            signal.signal(signo, previous)
        chan.close()
    return 255 if code < 0 else code
