"""Shared fixtures: an isolated user (XDG dirs, HOME, git identity), real git repositories,
and the real `posture` console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


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


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> User:
    """A fresh user; also applied to this process so in-process calls see the same dirs."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    (home / ".gitconfig").write_text("[user]\n\tname = Me\n\temail = me@example.com\n[init]\n\tdefaultBranch = main\n")
    for key in list(os.environ):
        if key.startswith(("XDG_", "GIT_", "POSTURE_")):
            monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return User(home=home, env=env)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git for a test; return stdout."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


@pytest.fixture
def make_repo(tmp_path: Path, user: User) -> Callable[..., Path]:
    """Build a real git repository: remotes, commits by given authors, files."""
    counter = iter(range(1000))

    def build(
        name: str | None = None,
        remotes: dict[str, str] | None = None,
        authors: list[str] = ("me@example.com",),
        files: dict[str, str] | None = None,
    ) -> Path:
        repo = tmp_path / (name or f"repo{next(counter)}")
        repo.mkdir(parents=True)
        git(repo, "init", "-q")
        for i, email in enumerate(authors):
            (repo / f"file{i}.txt").write_text(f"by {email}\n")
            git(repo, "add", ".")
            env = {**os.environ, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_NAME": email.split("@")[0]}
            git(repo, "commit", "-qm", f"commit by {email}", env=env)
        for rel, text in (files or {}).items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for rname, url in (remotes or {}).items():
            git(repo, "remote", "add", rname, url)
        return repo

    return build
