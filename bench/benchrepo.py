"""The repository the L4 and escalation benches sync: small text files in directories of 100."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path


def git(repo: Path, *args: str, env: dict | None = None) -> str:
    """Run git in `repo`; stdout, or RuntimeError with its stderr."""
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


def make_repo(path: Path, files: int, identity: tuple[str, str] | None = None) -> None:
    """A repository of `files` small text files, committed on main (as `identity`, else the user's git identity)."""
    rng = random.Random(20000)
    words = [f"w{n}" for n in range(5000)]
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for i in range(files):
        d = path / f"src{i // 100:04}"
        d.mkdir(exist_ok=True)
        (d / f"mod{i % 100:03}.py").write_text(" ".join(rng.choices(words, k=60)) + "\n")
    git(path, "add", ".")
    who = ["-c", f"user.name={identity[0]}", "-c", f"user.email={identity[1]}"] if identity else []
    git(path, *who, "commit", "-qm", "base")
