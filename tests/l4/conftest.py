"""L4 fixtures: the test network, a real sshd standing in for the VPS (tests/l4/vps.py),
the stand-in `tailscale` CLI (tests/l4/bin/tailscale), and a posture user configured for
that host whose `posture` runs in the test network's GW namespace.

Everything here is real except the Tailscale CLI; when sshd, git or the namespaces
cannot run, the fixtures raise and the tests fail (they never skip).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from testnet import TestNet, testnet

from l4.vps import STANDIN_BIN, Vps, start_vps, stop_vps, write_scenario

pytestmark = pytest.mark.l4


def posture_bin() -> str:
    """The installed console script next to the running interpreter, else on PATH (as tests/conftest.py)."""
    candidate = Path(sys.executable).parent / "posture"
    found = str(candidate) if candidate.exists() else shutil.which("posture")
    if not found:
        raise RuntimeError("the posture console script is not installed; run scripts/install-deps")
    return found


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


@dataclass
class L4User:
    """A posture user whose `[l4]` points at the VPS, running posture inside the GW namespace."""

    user: Any  # tests/conftest.py's User
    vps: Vps
    net: TestNet
    scenario_file: Path
    workdir: str

    @property
    def env(self) -> dict[str, str]:
        return self.user.env

    @property
    def home(self) -> Path:
        return self.user.home

    @property
    def state(self) -> Path:
        return self.user.state

    def scenario(self, **peer_overrides) -> None:
        """Rewrite the stand-in tailscale's view of the tailnet (peer fields, or BackendState/daemon)."""
        top = {k: peer_overrides.pop(k) for k in ("BackendState", "daemon") if k in peer_overrides}
        doc = self.vps.tailscale_scenario(**peer_overrides)
        doc.update(top)
        write_scenario(self.scenario_file, doc)

    def posture(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real `posture` console script in the GW namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.net.gw, posture_bin(), *args],
            cwd=cwd or self.home,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def python(self, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run Python code (this interpreter, posture importable) in the GW namespace as this user."""
        return subprocess.run(
            ["ip", "netns", "exec", self.net.gw, sys.executable, "-c", code, *args],
            cwd=self.home, env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def enroll(self) -> None:
        proc = self.posture("l4", "enroll")
        assert proc.returncode == 0, proc.stderr

    def remote(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Look at the host directly, as its user (the test machine is the host's disk)."""
        return subprocess.run(["runuser", "-u", self.vps.user, "--", *argv], capture_output=True, text=True, cwd="/")

    def sessions(self) -> list[dict]:
        proc = self.posture("status", "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture
def l4(user, vps: Vps, tmp_path: Path) -> L4User:
    """A user configured for the VPS (host named by its first label), tailnet up, peer online."""
    workdir = f"posture-t{uuid.uuid4().hex[:8]}"
    user.write_config(
        "\n".join(
            [
                'profile = "shell"',
                "[l4]",
                'host = "vps"',
                f'user = "{vps.user}"',
                f"port = {vps.port}",
                f'identity = "{vps.client_key}"',
                f'workdir = "{workdir}"',
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
