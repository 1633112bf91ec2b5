"""L3 test environment: the test network, `posture netd` and a private libvirtd in its GW namespace.

Everything the guest can reach is inside the test's namespaces: libvirtd (and so QEMU and
its user-mode network stack) runs in GW, whose only route leads to the HOSTS namespace.
Sessions run as root (libvirt's system instance, virtiofsd and the staging mounts need
it) through the real console script, with a fresh HOME holding planted credentials and a
user config whose `[l3] uri` points at the private libvirtd. Missing components (libvirtd,
QEMU, virtiofsd, nft, cgroup v2, the kernel) make these tests fail, never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for p in (str(TESTS), str(HERE), str(TESTS / "l2")):
    if p not in sys.path:
        sys.path.insert(0, p)

from l2env import probe_report  # noqa: E402,F401  (the same probe runs in both)
from privlibvirtd import private_libvirtd  # noqa: E402
from testnet import TestNet, testnet  # noqa: E402

from posture.netd import cgroups  # noqa: E402
from posture.netd import client as netd  # noqa: E402

POSTURE = os.environ.get("POSTURE_BIN") or str(Path(sys.executable).parent / "posture")
REAL_DATA = Path(os.environ.get("XDG_DATA_HOME") or "/root/.local/share")  # the fetched kernel stays between runs
CREDS = [".ssh/id_ed25519", ".aws/credentials", ".config/gh/hosts.yml", ".netrc", ".kube/config", ".docker/config.json"]
GW_LOOPBACK_PORT = 18080


def _require() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("the L3 tests need root (libvirt's system instance, network namespaces, the network helper)")
    for tool in ("libvirtd", "qemu-system-x86_64", "nft", "unshare", "nsenter", "git", "script"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: run scripts/install-deps")
    if not any(os.access(p, os.X_OK) for p in ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")):
        raise RuntimeError("virtiofsd is missing: run scripts/install-deps (qemu-system-x86)")
    if cgroups.v2_mount() is None:
        raise RuntimeError("no cgroup v2 hierarchy is mounted")
    if not os.access(POSTURE, os.X_OK):
        raise RuntimeError(f"{POSTURE} is missing: run scripts/install-deps")


@dataclass
class L3:
    """Everything an L3 test needs."""

    net: TestNet
    uri: str
    netd_sock: str
    home: Path
    xdg: Path
    canary: str
    secret: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "USER": "root",
            "LOGNAME": "root",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "TERM": "xterm",
            "XDG_CONFIG_HOME": str(self.xdg / "config"),
            "XDG_STATE_HOME": str(self.xdg / "state"),
            "XDG_DATA_HOME": str(REAL_DATA),
            "POSTURE_NETD_SOCKET": self.netd_sock,
            "POSTURE_CANARY_TOKEN": self.secret,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "GITHUB_TOKEN": self.secret,
        }
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        return [POSTURE, *args]

    def posture(self, *args: str, cwd: Path | None = None, tty: bool = False, timeout: float = 300, stdin: str | None = None,
                **extra: str) -> subprocess.CompletedProcess[str]:
        """Run the real console script (under a pty made by `script` when `tty`)."""
        argv = self.argv(*args)
        if tty:
            cmd = "stty rows 33 cols 101; " + " ".join(_quote(a) for a in argv)
            argv = ["script", "-qefc", cmd, "/dev/null"]
        return subprocess.run(argv, cwd=str(cwd or self.home), capture_output=True, text=True, timeout=timeout,
                              env=self.env(**extra), input=stdin, stdin=None if stdin is not None or tty else subprocess.DEVNULL)

    def popen(self, *args: str, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), cwd=str(cwd or self.home), env=self.env(), stdin=subprocess.DEVNULL, **kwargs)

    def make_project(self, name: str) -> Path:
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


def _ensure_kernel(env: dict[str, str]) -> None:
    """Fetch the guest kernel with the real `posture setup --l3-kernel` when none is there yet."""
    probe = subprocess.run([sys.executable, "-c", "from posture.l3 import kernel; kernel.find_kernel({}); kernel.find_busybox()"],
                           env=env, capture_output=True, text=True)
    if probe.returncode == 0:
        return
    done = subprocess.run([POSTURE, "setup", "--l3-kernel"], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"posture setup --l3-kernel failed: {done.stderr.strip()}")


@pytest.fixture(scope="session")
def l3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[L3]:
    """The test network, the network helper and a private libvirtd in GW, a fresh HOME with canaries."""
    _require()
    from l2env import start_netd, stop_netd  # the L2 suite's helper launcher (same netd)

    tag = uuid.uuid4().hex[:6]
    root = tmp_path_factory.mktemp(f"l3-{tag}")
    os.chmod(root, 0o755)
    home, xdg = root / "home", root / "xdg"
    home.mkdir()
    canary, secret = f"CANARY{uuid.uuid4().hex}", f"SECRET{uuid.uuid4().hex}"
    _plant(home, canary)
    rundir = Path(f"/run/posture-l3-test-{tag}")
    rundir.mkdir(mode=0o755)
    sock = str(rundir / "netd.sock")
    base, table = f"posture-l3test-{tag}", f"posture_l3test_{tag}"
    with testnet() as net:
        net.listen_on_gw_loopback(GW_LOOPBACK_PORT)
        netd_proc = start_netd(net, sock, base, table)
        try:
            with private_libvirtd(net.gw, root / "libvirtd") as uri:
                env = L3(net=net, uri=uri, netd_sock=sock, home=home, xdg=xdg, canary=canary, secret=secret)
                cfg = xdg / "config" / "posture"
                cfg.mkdir(parents=True)
                (cfg / "config.toml").write_text(f'[l3]\nuri = "{uri}"\nboot_timeout = 90\n')
                _ensure_kernel(env.env())
                yield env
        finally:
            stop_netd(netd_proc)
            shutil.rmtree(rundir, ignore_errors=True)
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
