"""L4 test helpers: the posture user configured for the stand-in VPS, running posture in the
test network's GW namespace. The fixtures that build them are in conftest.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testnet import TestNet

from l4.vps import Vps, write_scenario


def posture_bin() -> str:
    """The installed console script next to the running interpreter, else on PATH (as tests/conftest.py)."""
    candidate = Path(sys.executable).parent / "posture"
    found = str(candidate) if candidate.exists() else shutil.which("posture")
    if not found:
        raise RuntimeError("the posture console script is not installed; run scripts/install-deps")
    return found


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
