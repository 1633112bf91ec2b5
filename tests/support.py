"""Shared test helpers (a uniquely named module: every suite's conftest.py is a `conftest`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

def posture_bin() -> str:
    """The installed console script next to the running interpreter (the venv CI uses)."""
    candidate = Path(sys.executable).parent / "posture"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("posture")
    if not found:
        raise RuntimeError("the posture console script is not installed; run scripts/install-deps")
    return found


@dataclass
class User:
    """An isolated posture user: its own HOME, XDG dirs and git identity."""

    home: Path
    env: dict[str, str]

    @property
    def config_file(self) -> Path:
        return Path(self.env["XDG_CONFIG_HOME"]) / "posture" / "config.toml"

    @property
    def state(self) -> Path:
        return Path(self.env["XDG_STATE_HOME"]) / "posture"

    def write_config(self, text: str) -> Path:
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(text)
        return self.config_file

    def run(self, *args: str, cwd: Path | None = None, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the real `posture` console script as this user."""
        return subprocess.run(
            [posture_bin(), *args],
            cwd=cwd or self.home,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git for a test; return stdout."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()




def read_until(fd: int, needles: bytes | tuple[bytes, ...], timeout: float = 60) -> bytes:
    """Read a terminal (or pipe) until one of `needles` shows up, it closes, or `timeout` passes."""
    import select
    import time

    wanted = (needles,) if isinstance(needles, bytes) else needles
    buf = b""
    deadline = time.monotonic() + timeout
    while not any(n in buf for n in wanted) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf
