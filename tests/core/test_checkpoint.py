"""Checkpoints capture the work tree without touching HEAD, the index, the stash or the work tree."""

from __future__ import annotations

import hashlib
import subprocess
import os
from pathlib import Path

from support import git
from posture import checkpoint


def snapshot(repo: Path) -> dict[str, str]:
    """Byte-level fingerprint of everything the user could notice: work tree, HEAD, index, stash, refs."""
    files = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo)
        if rel.parts[0] == ".git" and (len(rel.parts) < 2 or rel.parts[1] in ("objects", "logs")):
            continue  # new objects are allowed; refs and reflogs under refs/posture are checked separately
        if rel.parts[:2] == (".git", "refs") and len(rel.parts) > 2 and rel.parts[2] == "posture":
            continue
        if path.is_file() and not path.is_symlink():
            files[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest() + oct(path.stat().st_mode)
        elif path.is_symlink():
            files[str(rel)] = "link:" + os.readlink(path)
    files["HEAD"] = git(repo, "rev-parse", "HEAD")
    files["stash"] = git(repo, "stash", "list")
    files["status"] = git(repo, "status", "--porcelain=v2", "--untracked-files=all")
    return files


def test_capture_is_exact_and_leaves_everything_alone(make_repo) -> None:
    repo = make_repo(files={"keep.txt": "keep\n", "gone.txt": "bye\n", ".gitignore": "*.log\n"})
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    (repo / "keep.txt").write_text("stash me\n")
    git(repo, "stash")
    (repo / "keep.txt").write_text("changed\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / "gone.txt").unlink()
    (repo / "new dir").mkdir()
    (repo / "new dir" / "naïve ünïcode.txt").write_text("unicode\n")
    (repo / "blob.bin").write_bytes(bytes(range(256)) * 40)
    (repo / "debug.log").write_text("ignored\n")
    before = snapshot(repo)
    index_before = (repo / ".git" / "index").read_bytes()

    cp = checkpoint.capture(repo, "s1")

    assert snapshot(repo) == before
    assert (repo / ".git" / "index").read_bytes() == index_before
    assert cp.ref == "refs/posture/s1/checkpoint-1"
    names = set(git(repo, "-c", "core.quotePath=false", "ls-tree", "-r", "--name-only", cp.ref).splitlines())
    assert {"keep.txt", "staged.txt", "new dir/naïve ünïcode.txt", "blob.bin", ".gitignore"} <= names
    assert "gone.txt" not in names and "debug.log" not in names
    assert git(repo, "show", f"{cp.ref}:keep.txt") == "changed"
    blob = git(repo, "cat-file", "-s", f"{cp.ref}:blob.bin")
    assert blob == str(256 * 40)
    assert git(repo, "rev-parse", f"{cp.ref}^") == before["HEAD"]


def test_numbering_and_listing(make_repo) -> None:
    repo = make_repo()
    first = checkpoint.capture(repo, "s2")
    (repo / "more.txt").write_text("x")
    second = checkpoint.capture(repo, "s2")
    assert second.ref.endswith("checkpoint-2")
    assert checkpoint.list_checkpoints(repo, "s2") == [first.ref, second.ref]


def test_restore_into_a_new_directory(make_repo, tmp_path: Path) -> None:
    repo = make_repo(files={"a/b.txt": "b\n"})
    cp = checkpoint.capture(repo, "s3")
    target = tmp_path / "restored"
    checkpoint.restore_into(repo, cp.ref, target)
    assert (target / "a" / "b.txt").read_text() == "b\n"


def test_project_outside_git_gets_a_shadow_repository(user, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "work.txt").write_text("mine\n")
    cp = checkpoint.capture(plain, "s4")
    assert not (plain / ".git").exists()
    shadow = checkpoint.shadow_git_dir(plain)
    assert git(plain, f"--git-dir={shadow}", "show", f"{cp.ref}:work.txt") == "mine"


def test_repository_without_commits(make_repo) -> None:
    repo = make_repo(authors=[], files={"first.txt": "1\n"})
    cp = checkpoint.capture(repo, "s5")
    assert git(repo, "show", f"{cp.ref}:first.txt") == "1"
    assert subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=repo).returncode != 0


def test_posture_placeholders_are_not_captured(make_repo) -> None:
    """Empty stand-ins for protected paths (present while a sandbox runs) are not the user's work."""
    from posture import placeholders

    repo = make_repo()
    registry = placeholders.registry_for(repo)
    held = placeholders.acquire(registry, "s6", [(str(repo / ".envrc"), False), (str(repo / ".vscode"), True)])
    (repo / "real.txt").write_text("mine\n")
    (repo / "empty-but-mine").write_text("")
    cp = checkpoint.capture(repo, "s6")
    names = set(git(repo, "ls-tree", "-r", "--name-only", cp.ref).splitlines())
    assert "real.txt" in names and "empty-but-mine" in names and ".envrc" not in names
    placeholders.release(registry, "s6")
    assert not (repo / ".envrc").exists() and len(held) == 2
