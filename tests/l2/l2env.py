"""L2 test environment: the test network, `posture netd` in its GW namespace, and a non-root user.

Root sets up (network namespaces, the helper); the CLI side of every session runs as the
ordinary user `posture-test` in the root network namespace, through the real console
script. Missing components (bwrap, slirp4netns, nft, cgroup v2, the user) make these
tests fail, never skip.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from support import posture_bin  # noqa: E402
from testnet import TestNet, testnet  # noqa: E402

from posture import credentials  # noqa: E402
from posture.netd import cgroups  # noqa: E402
from posture.netd import client as netd  # noqa: E402

USER = "posture-test"
POSTURE = os.environ.get("POSTURE_BIN") or posture_bin()
# Every credential of posture's one list (src/posture/credentials.py), planted in the home; a file inside each listed dir.
CREDS = list(dict.fromkeys([
    ".ssh/id_ed25519", ".ssh/id_rsa", ".gnupg/private-keys-v1.d/key.key", ".aws/credentials", ".kube/config",
    ".password-store/bank.gpg", ".config/tailscale/state",
    *credentials.HOME_FILES, *(f"{d}/posture-planted" for d in credentials.HOME_DIRS),
]))


def _require() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("the L2 tests need root (network namespaces, the network helper)")
    for tool in ("bwrap", "slirp4netns", "nft", "runuser", "script", "git"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: run scripts/install-deps")
    if cgroups.v2_mount() is None:
        raise RuntimeError("no cgroup v2 hierarchy is mounted")
    if not os.access(POSTURE, os.X_OK):
        raise RuntimeError(f"{POSTURE} is missing: run scripts/install-deps")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        raise RuntimeError(f"user {USER} is missing: scripts/test creates it (useradd --create-home {USER})") from None


@dataclass
class L2:
    """Everything an L2 test needs."""

    net: TestNet
    sock: str
    base: str  # the helper's cgroup, relative to the v2 root
    table: str
    home: Path
    canary: str
    secret: str
    uid: int
    gid: int
    gw_loopback_port: int
    host_unix: list[str] = field(default_factory=list)
    abstract: list[str] = field(default_factory=list)
    netd_proc: subprocess.Popen | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "USER": USER,
            "LOGNAME": USER,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TERM": "xterm",
            "POSTURE_NETD_SOCKET": self.sock,
            "POSTURE_CANARY_TOKEN": self.secret,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "SSH_AUTH_SOCK": self.host_unix[0] if self.host_unix else "/nonexistent",
            "DBUS_SESSION_BUS_ADDRESS": "unix:abstract=" + (self.abstract[0] if self.abstract else "x"),
        }
        env.update(extra)
        return env

    def posture(self, *args: str, cwd: Path | None = None, tty: bool = False, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run the real console script as the ordinary user (under a pty made by `script` when `tty`)."""
        inner = ["runuser", "-u", USER, "--", "env", "-i", *[f"{k}={v}" for k, v in self.env(**extra).items()], POSTURE, *args]
        if tty:
            cmd = " ".join(_quote(a) for a in inner)
            argv = ["script", "-qefc", cmd, "/dev/null"]
        else:
            argv = inner
        return subprocess.run(argv, cwd=str(cwd or self.home), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL if not tty else None)

    def status(self) -> dict:
        return netd.request(self.sock, {"op": "status"})

    def make_project(self, name: str) -> Path:
        """A git repository owned by the user, with its identity in .git/config."""
        repo = self.home / "projects" / name
        if repo.exists():
            shutil.rmtree(repo)
        repo.mkdir(parents=True)
        run = lambda *a: subprocess.run(["git", "-c", "safe.directory=*", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
        run("init", "-q", "-b", "main")
        run("config", "user.name", "Posture Test")
        run("config", "user.email", "posture-test@example.com")
        (repo / "README.md").write_text("hello\n")
        run("add", ".")
        run("commit", "-qm", "init")
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(self.home / "projects")], check=True)
        return repo

    def settled(self, timeout: float = 5.0) -> bool:
        """Wait until the helper has removed every session cgroup (it does so after posture returns)."""
        deadline = time.monotonic() + timeout
        while (self.box_cgroups() or self.net_cgroups()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.box_cgroups() and not self.net_cgroups()

    def box_cgroups(self) -> list[str]:
        base = cgroups.path_of(f"{self.base}/box")
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def net_cgroups(self) -> list[str]:
        """cgroups below the helper's filtered one that hold a running slirp4netns (idle launchers do not count)."""
        base = cgroups.path_of(f"{self.base}/net")
        found = []
        for p in (base.iterdir() if base.is_dir() else []):
            if p.is_dir() and any(_comm(pid) == "slirp4netns" for pid in cgroups.procs(f"{self.base}/net/{p.name}")):
                found.append(p.name)
        return sorted(found)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def start_netd(net: TestNet, sock: str, base: str, table: str) -> subprocess.Popen:
    """Run the helper in the GW namespace (nsenter keeps the host's /sys and its cgroup mounts)."""
    log = open(Path(sock).parent / "netd.log", "ab")
    proc = subprocess.Popen(
        ["nsenter", f"--net={net.gw_path}", sys.executable, "-m", "posture.netd", "--socket", sock, "--cgroup", base, "--table", table],
        stdout=log, stderr=log,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if netd.request(sock, {"op": "status"}, timeout=2).get("verified"):
                return proc
        except (OSError, ValueError, netd.NetdError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"posture netd did not come up: {(Path(sock).parent / 'netd.log').read_text()[-2000:]}")


def stop_netd(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _plant(home: Path, canary: str) -> None:
    for rel in CREDS:
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"secret material {canary}\n")
    (home / ".bashrc").write_text(f"# host bashrc {canary}\n")
    other = home / ".claude" / "projects" / "-other-project"
    other.mkdir(parents=True)
    (other / "history.jsonl").write_text(json.dumps({"msg": f"other project's chat {canary}"}) + "\n")
    (home / ".claude.json").write_text(json.dumps({"projects": {"/other": canary}}))


@pytest.fixture(scope="session")
def l2() -> Iterator[L2]:
    """The test network, the helper in GW, and a fresh home for `posture-test` with canaries planted."""
    _require()
    tag = uuid.uuid4().hex[:6]
    pw = pwd.getpwnam(USER)
    home = Path(pw.pw_dir) / f"l2-{tag}"
    home.mkdir(parents=True)
    canary = f"CANARY{uuid.uuid4().hex}"
    secret = f"SECRET{uuid.uuid4().hex}"
    _plant(home, canary)
    rundir = Path(f"/run/posture-test-{tag}")
    rundir.mkdir(mode=0o755)
    sock = str(rundir / "netd.sock")
    base, table = f"posture-test-{tag}", f"posture_test_{tag}"
    listeners: list[socket.socket] = []
    with testnet() as net:
        gw_port = 18080
        net.listen_on_gw_loopback(gw_port)
        env = L2(net=net, sock=sock, base=base, table=table, home=home, canary=canary, secret=secret,
                 uid=pw.pw_uid, gid=pw.pw_gid, gw_loopback_port=gw_port)
        # Host unix sockets (a listener in the user's home and in /tmp) and an abstract one, in the root netns.
        for path in (home / "agent.sock", Path(f"/tmp/posture-test-{tag}.sock")):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(path))
            os.chmod(path, 0o777)
            s.listen(8)
            listeners.append(s)
            env.host_unix.append(str(path))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("\0" + f"posture-test-{tag}")
        s.listen(8)
        listeners.append(s)
        env.abstract.append(f"posture-test-{tag}")
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(home)], check=True)
        env.netd_proc = start_netd(net, sock, base, table)
        try:
            yield env
        finally:
            stop_netd(env.netd_proc)
            for s in listeners:
                s.close()
            Path(f"/tmp/posture-test-{tag}.sock").unlink(missing_ok=True)
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(rundir, ignore_errors=True)
            try:
                cgroups.remove(base)
            except OSError:
                pass


def probe_report(output: str) -> dict:
    """The probe's JSON report from a session's output (a pty adds carriage returns)."""
    for line in output.replace("\r", "").splitlines():
        if "PROBE-RESULT:" in line:  # under a pty, the probe's TIOCSTI attempts echo in front of it
            return json.loads(line.split("PROBE-RESULT:", 1)[1])
    raise AssertionError(f"the probe printed no report; output was:\n{output[-4000:]}")
