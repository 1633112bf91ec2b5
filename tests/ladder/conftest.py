"""The whole ladder in one test network: `posture netd` (L2) in its GW namespace, a real sshd
standing in for the L4 host in its HOSTS namespace, and the stand-in `tailscale` CLI; posture
runs (as root, with its own HOME and XDG dirs) in the GW namespace so that L4 reaches the host.
Missing components make these tests fail, never skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS / "l2"))
sys.path.insert(0, str(TESTS / "l3"))

from l2env import start_netd, stop_netd  # noqa: E402
from privlibvirtd import private_libvirtd  # noqa: E402
from l4.vps import STANDIN_BIN, Vps, l4_config, start_vps, stop_vps, write_scenario  # noqa: E402
from testnet import TestNet, testnet  # noqa: E402

from support import User, posture_bin  # noqa: E402
from posture.netd import cgroups  # noqa: E402


@dataclass
class Ladder:
    """Running components and the user that drives them."""

    net: TestNet
    vps: Vps
    netd_sock: str
    netd_base: str
    libvirt_uri: str
    user: User | None = None

    def posture(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The real console script, in the GW namespace, as the test user."""
        assert self.user is not None
        return subprocess.run(
            ["nsenter", f"--net={self.net.gw_path}", posture_bin(), *args],  # nsenter keeps /sys (and its cgroup mounts)
            cwd=cwd or self.user.home, env={**self.user.env, **(env or {})},
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str, **kw) -> str:
        proc = self.posture(*args, **kw)
        assert proc.returncode == 0, f"posture {' '.join(args)} -> {proc.returncode}: {proc.stderr}"
        return proc.stdout

    def sessions(self) -> dict[str, dict]:
        return {s["id"]: s for s in json.loads(self.ok("status", "--json"))}

    def tailnet(self, **peer) -> None:
        assert self.user is not None
        doc = self.vps.tailscale_scenario(**peer)
        write_scenario(Path(self.user.env["POSTURE_TEST_TAILSCALE_STATE"]), doc)


def _require() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("the ladder tests need root (network namespaces, the network helper, sshd)")
    for tool in ("bwrap", "slirp4netns", "nft", "/usr/sbin/sshd", "git", "tmux", "libvirtd", "qemu-system-x86_64"):
        if not (os.path.exists(tool) if tool.startswith("/") else shutil.which(tool)):
            raise RuntimeError(f"{tool} is missing: run scripts/install-deps")


def _ensure_kernel(ladder: Ladder) -> None:
    """The guest kernel where every user finds it (/var/lib/posture/l3), fetched once with the real
    `posture setup --l3-kernel` when it is not there yet (the helper it finds running is the ladder's)."""
    assert ladder.user is not None
    code = "from posture.l3 import kernel; kernel.find_kernel({}); kernel.find_busybox()"
    if subprocess.run([sys.executable, "-c", code], env=ladder.user.env, capture_output=True).returncode == 0:
        return
    done = ladder.posture("setup", "--l3-kernel", env={"POSTURE_NETD_SOCKET": ladder.netd_sock}, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"posture setup --l3-kernel failed: {done.stderr.strip()[-600:]}")


@pytest.fixture(scope="module")
def ladder_env() -> Iterator[Ladder]:
    _require()
    tag = uuid.uuid4().hex[:6]
    rundir = Path(f"/run/posture-ladder-{tag}")
    rundir.mkdir(mode=0o755)
    base, table = f"posture-ladder-{tag}", f"posture_ladder_{tag}"
    with testnet("ld") as net:
        netd_proc = start_netd(net, str(rundir / "netd.sock"), base, table)
        vps = start_vps(net)
        try:
            with private_libvirtd(net.gw, rundir / "libvirtd") as uri:
                yield Ladder(net=net, vps=vps, netd_sock=str(rundir / "netd.sock"), netd_base=base, libvirt_uri=uri)
        finally:
            stop_vps(vps)
            stop_netd(netd_proc)
            shutil.rmtree(rundir, ignore_errors=True)
            try:
                cgroups.remove(base)
            except OSError:
                pass


@pytest.fixture
def ladder(ladder_env: Ladder, user: User, tmp_path: Path) -> Iterator[Ladder]:
    """A user whose config reaches every level of this ladder, enrolled with the L4 host."""
    workdir = f"posture-e{uuid.uuid4().hex[:8]}"
    vps = ladder_env.vps
    user.write_config(
        "\n".join([
            'profile = "shell"',
            'identities = ["me@example.com"]',
            "[l2]",
            f'netd_socket = "{ladder_env.netd_sock}"',
            "[l3]",
            f'uri = "{ladder_env.libvirt_uri}"',
            "boot_timeout = 90",
            *l4_config(vps, workdir),
            "",
        ])
    )
    user.env["PATH"] = f"{STANDIN_BIN}:{user.env['PATH']}"
    user.env["POSTURE_TEST_TAILSCALE_STATE"] = str(tmp_path / "tailscale.json")
    ladder_env.user = user
    _ensure_kernel(ladder_env)
    ladder_env.tailnet()
    ladder_env.ok("l4", "enroll")
    try:
        yield ladder_env
    finally:
        ladder_env.posture("down", "--all")
        subprocess.run(["rm", "-rf", str(vps.home / workdir)])
        ladder_env.user = None
