"""L4 fixtures: the test network, a real sshd standing in for the VPS (tests/l4/vps.py),
the stand-in `tailscale` CLI (tests/l4/bin/tailscale), and a posture user configured for
that host whose `posture` runs in the test network's GW namespace (tests/l4/l4env.py).

Everything here is real except the Tailscale CLI; when sshd, git or the namespaces
cannot run, the fixtures raise and the tests fail (they never skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from testnet import testnet

from l4.l4env import L4User
from l4.vps import STANDIN_BIN, Vps, l4_config, start_vps, stop_vps


def _require_tools() -> None:
    missing = [t for t in ("/usr/sbin/sshd", "ssh-keygen", "git", "tmux", "ip") if not (os.path.exists(t) if t.startswith("/") else shutil.which(t))]
    if missing:
        raise RuntimeError(f"L4 tests need {', '.join(missing)} (scripts/deps/l4.apt; run scripts/install-deps)")
    if os.geteuid() != 0:
        raise RuntimeError("L4 tests need root (network namespaces, sshd, useradd)")


@pytest.fixture(scope="module")
def vps() -> Iterator[Vps]:
    """A real OpenSSH server at 100.64.0.10:2222 in the test network's HOSTS namespace."""
    _require_tools()
    with testnet("l4") as net:
        host = start_vps(net)
        try:
            yield host
        finally:
            stop_vps(host)


@pytest.fixture
def l4(user, vps: Vps, tmp_path: Path) -> L4User:
    """A user configured for the VPS (host named by its first label), tailnet up, peer online."""
    workdir = f"posture-t{uuid.uuid4().hex[:8]}"
    user.write_config(
        "\n".join(
            [
                'profile = "shell"',
                *l4_config(vps, workdir),
                "",
            ]
        )
    )
    scenario = tmp_path / "tailscale.json"
    user.env["PATH"] = f"{STANDIN_BIN}:{user.env['PATH']}"
    user.env["POSTURE_TEST_TAILSCALE_STATE"] = str(scenario)
    os.environ["PATH"] = user.env["PATH"]
    os.environ["POSTURE_TEST_TAILSCALE_STATE"] = str(scenario)
    u = L4User(user=user, vps=vps, net=vps.net, scenario_file=scenario, workdir=workdir)
    u.scenario()
    yield u
    subprocess.run(["rm", "-rf", str(vps.home / workdir)])
