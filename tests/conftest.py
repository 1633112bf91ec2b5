"""Shared fixtures: an isolated user (XDG dirs, HOME, git identity), real git repositories,
and the real `posture` console script."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

from support import User, git, posture_bin  # noqa: E402,F401  (re-exported for older imports)


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
