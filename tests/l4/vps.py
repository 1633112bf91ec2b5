"""A stand-in for the L4 host: a real OpenSSH server (Debian's sshd, started here, not by
an init system) with its own config, host keys and authorized keys, serving a dedicated
user, inside the test network's HOSTS namespace at the tailnet address 100.64.0.10.

Used by tests/l4/conftest.py and bench/l4_sync.py. Nothing touches the root network
namespace; clients run in the GW namespace (`ip netns exec`).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from testnet import TAILNET, TestNet, in_ns

SSHD = "/usr/sbin/sshd"
PORT = 2222
USER = "posture-vps"
HERE = Path(__file__).parent
STANDIN_BIN = HERE / "bin"
LOGIN_ENV_DIR = ".posture-test-login-env"  # in the user's home: when it exists, every session's env is recorded there
# The test user's login shell: records the environment sshd hands each session (when the test
# asks for it: the directory exists), then runs the command as `sh -c` would. Not a ForceCommand,
# since sshd refuses SSH signal requests to forced commands.
RECORDER = f"""#!/bin/sh
if [ -d "$HOME/{LOGIN_ENV_DIR}" ]; then env > "$HOME/{LOGIN_ENV_DIR}/$$"; ls -d /tmp/ssh-* >> "$HOME/{LOGIN_ENV_DIR}/$$.agentdirs" 2>/dev/null; fi
[ "$1" = "-c" ] || exit 126
exec /bin/sh -c "$2"
"""


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    """The dedicated remote user (created once; its password field '*' so sshd does not treat it as locked)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        sh("useradd", "--create-home", "--shell", "/bin/bash", name)
        pw = pwd.getpwnam(name)
    sh("usermod", "-p", "*", name)
    return pw


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key without passphrase; returns the public key line."""
    for p in (path, path.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))
    return path.with_name(path.name + ".pub").read_text().strip()


@dataclass
class Vps:
    """The running sshd and what a test needs to know about it."""

    net: TestNet
    dir: Path
    user: str
    home: Path
    client_key: Path
    host_key_line: str = ""
    ip: str = TAILNET
    port: int = PORT
    proc: subprocess.Popen | None = None
    log: Path = field(default_factory=Path)

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    def config(self) -> Path:
        cfg = self.dir / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.ip}",
                    f"HostKey {self.host_key}",
                    "PidFile none",
                    f"AuthorizedKeysFile {self.dir}/authorized_keys/%u",
                    "AuthenticationMethods publickey",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    f"AllowUsers {self.user}",
                    # Generous on purpose: if posture sent env or asked for agent forwarding, it would show.
                    "AcceptEnv *",
                    "AllowAgentForwarding yes",
                    "PermitUserEnvironment no",
                    "X11Forwarding no",
                    "StrictModes yes",
                    "MaxStartups 50",
                    "MaxSessions 50",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        return cfg

    def start(self) -> None:
        """Start sshd in the HOSTS namespace and wait until it accepts connections."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        cfg = self.config()
        recorder = self.dir / "login-recorder"
        recorder.write_text(RECORDER)
        os.chmod(recorder, 0o755)
        sh("usermod", "-s", str(recorder), self.user)
        sh(SSHD, "-t", "-f", str(cfg))
        self.log = self.dir / "sshd.log"
        # A clean environment: nothing of the test runner's (an SSH_AUTH_SOCK, say) may reach sessions through sshd.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.net.hosts, SSHD, "-D", "-e", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
        )
        deadline = time.monotonic() + 10
        probe = f"import socket;s=socket.create_connection(({self.ip!r},{self.port}),timeout=1);assert s.recv(8).startswith(b'SSH-')"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if in_ns(self.net.gw, "python3", "-c", probe, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not come up: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop sshd (running sessions' processes are left to the namespace teardown)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def new_host_key(self) -> str:
        """Replace the host key (a "reinstalled" or impostor host) and restart sshd."""
        self.stop()
        self.host_key_line = keygen(self.host_key, "vps-host")
        self.start()
        return self.host_key_line

    def tailscale_scenario(self, **peer_overrides) -> dict:
        """A stand-in scenario in which this host is an online peer named vps."""
        peer = {
            "HostName": "vps",
            "DNSName": "vps.tailnet-xyz.ts.net.",
            "TailscaleIPs": [self.ip, "fd7a:115c:a1e0::10"],
            "Online": True,
            "Expired": False,
            "sshHostKeys": [self.host_key_line],
        }
        peer.update(peer_overrides)
        other = {"HostName": "printer", "DNSName": "printer.tailnet-xyz.ts.net.", "TailscaleIPs": ["100.64.0.99"], "Online": False}
        return {"daemon": True, "BackendState": "Running", "peers": [other, peer]}


def l4_config(vps: Vps, workdir: str) -> list[str]:
    """The user config's `[l4]` table for this VPS, named by its first label as MagicDNS gives it."""
    return ["[l4]", 'host = "vps"', f'user = "{vps.user}"', f"port = {vps.port}", f'identity = "{vps.client_key}"', f'workdir = "{workdir}"']


def start_vps(net: TestNet) -> Vps:
    """Create the user, keys and config, and start sshd."""
    pw = ensure_user()
    base = Path(tempfile.mkdtemp(prefix="posture-vps-", dir="/run"))
    os.chmod(base, 0o755)  # sshd reads authorized keys as the user; StrictModes wants no group/world write
    (base / "authorized_keys").mkdir(mode=0o755)
    client_dir = Path(tempfile.mkdtemp(prefix="posture-client-"))
    client_key = client_dir / "id_l4"
    pub = keygen(client_key, "posture-l4-test")
    auth = base / "authorized_keys" / pw.pw_name
    auth.write_text(pub + "\n")
    os.chmod(auth, 0o644)
    vps = Vps(net=net, dir=base, user=pw.pw_name, home=Path(pw.pw_dir), client_key=client_key)
    vps.host_key_line = keygen(vps.host_key, "vps-host")
    vps.start()
    return vps


def stop_vps(vps: Vps) -> None:
    """Stop sshd and remove its directory (processes left in HOSTS die with the test network)."""
    vps.stop()
    sh("usermod", "-s", "/bin/bash", vps.user)
    shutil.rmtree(vps.dir, ignore_errors=True)
    shutil.rmtree(vps.client_key.parent, ignore_errors=True)


def write_scenario(path: Path, scenario: dict) -> None:
    """Write the stand-in tailscale's scenario."""
    path.write_text(json.dumps(scenario))
