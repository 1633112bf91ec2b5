"""L3 test environment: the test network, `posture netd` and a private libvirtd in its GW namespace.

Everything the guest can reach is inside the test's namespaces: libvirtd (and so QEMU and
its user-mode network stack) runs in GW, whose only route leads to the HOSTS namespace.
Sessions run as the ordinary user `posture-test` (in the libvirt and kvm groups, as
scripts/test sets up; the fixture makes sure) through the real console script, started
with setpriv (which execs, so a signal to the process reaches posture itself), with a
fresh HOME holding planted credentials and a user config whose `[l3] uri` points at the
private libvirtd's socket (group libvirt, like Debian's system socket). `l3.other` is a
second ordinary user, `l3.root` runs as root. The kernel comes from the real `posture setup
--l3-kernel` (run as root) in /var/lib/posture/l3. Missing components (libvirtd, QEMU,
virtiofsd, nft, cgroup v2, the kernel) make these tests fail, never skip.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for p in (str(TESTS), str(HERE), str(TESTS / "l2")):
    if p not in sys.path:
        sys.path.insert(0, p)

from l2env import probe_report  # noqa: E402,F401  (the same probe runs in both)
from privlibvirtd import private_libvirtd  # noqa: E402

from posture.netd import cgroups  # noqa: E402
from posture.netd import client as netd  # noqa: E402
from testnet import TestNet, testnet  # noqa: E402

POSTURE = os.environ.get("POSTURE_BIN") or str(Path(sys.executable).parent / "posture")
USER, USER2 = "posture-test", "posture-test2"
GROUPS = ("libvirt", "kvm")
CREDS = [".ssh/id_ed25519", ".aws/credentials", ".config/gh/hosts.yml", ".netrc", ".kube/config", ".docker/config.json"]
GW_LOOPBACK_PORT = 18080


def _require() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("the L3 tests need root (libvirt's system instance, network namespaces, the network helper)")
    for tool in ("libvirtd", "qemu-system-x86_64", "nft", "unshare", "nsenter", "git", "script", "setpriv"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: run scripts/install-deps")
    if not any(os.access(p, os.X_OK) for p in ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")):
        raise RuntimeError("virtiofsd is missing: run scripts/install-deps (qemu-system-x86)")
    if cgroups.v2_mount() is None:
        raise RuntimeError("no cgroup v2 hierarchy is mounted")
    if not os.access(POSTURE, os.X_OK):
        raise RuntimeError(f"{POSTURE} is missing: run scripts/install-deps")


def _ensure_user(name: str) -> None:
    """The ordinary test user exists and is in the libvirt and kvm groups (what scripts/test does)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    for group in GROUPS:
        try:
            members = grp.getgrnam(group).gr_mem
        except KeyError:
            raise RuntimeError(f"group {group} is missing: install libvirt-daemon-system and qemu-system-x86") from None
        if name not in members:
            subprocess.run(["usermod", "-aG", group, name], check=True)


@dataclass
class L3:
    """Everything an L3 test needs, for one user (`user`; `other` and `root` are the same test bed for others)."""

    net: TestNet
    uri: str
    netd_sock: str
    home: Path
    xdg: Path
    canary: str
    secret: str
    user: str = USER
    peers: dict[str, L3] = field(default_factory=dict)

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.user).pw_uid

    @property
    def gid(self) -> int:
        return pwd.getpwnam(self.user).pw_gid

    @property
    def other(self) -> L3:
        """The second ordinary user."""
        return self.peers[USER2]

    @property
    def root(self) -> L3:
        """Root, on the same libvirtd and network helper."""
        return self.peers["root"]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "USER": self.user,
            "LOGNAME": self.user,
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "TERM": "xterm",
            "XDG_CONFIG_HOME": str(self.xdg / "config"),
            "XDG_STATE_HOME": str(self.xdg / "state"),
            "XDG_DATA_HOME": str(self.xdg / "data"),
            "POSTURE_NETD_SOCKET": self.netd_sock,
            "POSTURE_CANARY_TOKEN": self.secret,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "GITHUB_TOKEN": self.secret,
        }
        env.update(extra)
        return env

    def argv(self, *args: str, **extra: str) -> list[str]:
        """The console script as this user with this env (setpriv execs: the pid is posture's own)."""
        env = [f"{k}={v}" for k, v in self.env(**extra).items()]
        if self.user == "root":
            return ["env", "-i", *env, POSTURE, *args]
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.gid}", "--init-groups", "--", "env", "-i", *env, POSTURE, *args]

    def run_as(self, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run any command as this user (git on the host, for instance)."""
        wrap = [] if self.user == "root" else ["setpriv", f"--reuid={self.user}", f"--regid={self.gid}", "--init-groups", "--"]
        return subprocess.run([*wrap, "env", f"HOME={self.home}", *argv], cwd=str(cwd or self.home), capture_output=True, text=True)

    def posture(self, *args: str, cwd: Path | None = None, tty: bool = False, timeout: float = 300, stdin: str | None = None,
                nofile: int | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run the real console script (under a pty made by `script` when `tty`; with RLIMIT_NOFILE `nofile`)."""
        argv = self.argv(*args, **extra)
        if nofile is not None:
            argv = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *argv]
        if tty:
            cmd = "stty rows 33 cols 101; " + " ".join(_quote(a) for a in argv)
            argv = ["script", "-qefc", cmd, "/dev/null"]
        return subprocess.run(argv, cwd=str(cwd or self.home), capture_output=True, text=True, timeout=timeout,
                              input=stdin, stdin=None if stdin is not None or tty else subprocess.DEVNULL)

    def popen(self, *args: str, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), cwd=str(cwd or self.home), stdin=subprocess.DEVNULL, **kwargs)

    def config(self, text: str = "", replace: tuple[str, str] | None = None) -> Path:
        """A config dir holding this user's base config plus `text` (for XDG_CONFIG_HOME=...), readable by the user."""
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="cfg-", dir=self.home))
        (d / "posture").mkdir()
        base = (self.xdg / "config" / "posture" / "config.toml").read_text()
        if replace:
            base = base.replace(*replace)
        (d / "posture" / "config.toml").write_text(base + text)
        if self.user != "root":
            subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(d)], check=True)
        return d

    def make_project(self, name: str) -> Path:
        """A git repository owned by this user."""
        repo = self.home / "projects" / name
        if repo.exists():
            shutil.rmtree(repo)
        repo.mkdir(parents=True)
        run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
        run("init", "-q", "-b", "main")
        run("config", "user.name", "Posture Test")
        run("config", "user.email", "posture-test@example.com")
        (repo / "README.md").write_text("hello\n")
        (repo / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
        run("add", "README.md")
        run("commit", "-qm", "init")
        if self.user != "root":
            subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(self.home / "projects")], check=True)
        return repo

    def domains(self) -> list[str]:
        """Names of every domain the private libvirtd knows (running or defined)."""
        import libvirt

        conn = libvirt.open(self.uri)
        try:
            return sorted({d.name() for d in conn.listAllDomains()})
        finally:
            conn.close()


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _plant(home: Path, canary: str) -> None:
    for rel in CREDS:
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"secret material {canary}\n")
    (home / ".bashrc").write_text(f"# host bashrc {canary}\n")
    other = home / ".claude" / "projects" / "-other-project"
    other.mkdir(parents=True)
    (other / "history.jsonl").write_text(json.dumps({"msg": f"other project's chat {canary}"}) + "\n")


def _ensure_kernel(user: L3, root: L3) -> None:
    """Fetch the guest kernel with the real `posture setup --l3-kernel` (as root) when the user finds none yet."""
    code = "from posture.l3 import kernel; k = kernel.find_kernel({}); kernel.find_busybox(); assert k.source == 'fetched' or k.source == 'host', k"
    if user.run_as(sys.executable, "-c", code).returncode == 0:
        return
    done = root.posture("setup", "--l3-kernel", timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"posture setup --l3-kernel failed: {done.stderr.strip()}")
    check = user.run_as(sys.executable, "-c", code)
    if check.returncode != 0:
        raise RuntimeError(f"after `posture setup --l3-kernel` {user.user} still finds no kernel: {check.stderr.strip()[-400:]}")


def _bed(net: TestNet, uri: str, sock: str, user: str, home: Path, canary: str, secret: str) -> L3:
    """One user's side of the test bed: a fresh home with canaries and a config pointing at the private libvirtd."""
    home.mkdir(parents=True)
    _plant(home, canary)
    xdg = home / ".posture-test-xdg"
    cfg = xdg / "config" / "posture"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text(f'[l3]\nuri = "{uri}"\nboot_timeout = 90\n')
    env = L3(net=net, uri=uri, netd_sock=sock, home=home, xdg=xdg, canary=canary, secret=secret, user=user)
    if user != "root":
        subprocess.run(["chown", "-R", f"{env.uid}:{env.gid}", str(home)], check=True)
    return env


@pytest.fixture(scope="session")
def l3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[L3]:
    """The test network, the network helper and a private libvirtd in GW; fresh homes with canaries for two users and root."""
    _require()
    from l2env import start_netd, stop_netd  # the L2 suite's helper launcher (same netd)

    for name in (USER, USER2):
        _ensure_user(name)
    tag = uuid.uuid4().hex[:6]
    root = tmp_path_factory.mktemp(f"l3-{tag}")
    os.chmod(root, 0o755)
    canary, secret = f"CANARY{uuid.uuid4().hex}", f"SECRET{uuid.uuid4().hex}"
    rundir = Path(f"/run/posture-l3-test-{tag}")
    rundir.mkdir(mode=0o755)
    sock = str(rundir / "netd.sock")
    base, table = f"posture-l3test-{tag}", f"posture_l3test_{tag}"
    homes: list[Path] = []
    with testnet() as net:
        net.listen_on_gw_loopback(GW_LOOPBACK_PORT)
        netd_proc = start_netd(net, sock, base, table)
        try:
            with private_libvirtd(net.gw, rundir / "libvirtd") as uri:
                beds = {}
                for name in (USER, USER2):
                    home = Path(pwd.getpwnam(name).pw_dir) / f"l3-{tag}"
                    homes.append(home)
                    beds[name] = _bed(net, uri, sock, name, home, canary, secret)
                beds["root"] = _bed(net, uri, sock, "root", root / "home", canary, secret)
                for bed in beds.values():
                    bed.peers = beds
                _ensure_kernel(beds[USER], beds["root"])
                yield beds[USER]
        finally:
            stop_netd(netd_proc)
            shutil.rmtree(rundir, ignore_errors=True)
            for home in homes:
                shutil.rmtree(home, ignore_errors=True)
            try:
                cgroups.remove(base)
            except OSError:
                pass


def wait_for(pred, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


_ = netd
