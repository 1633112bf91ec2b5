"""Code out as a checkpoint, work back as review refs: untouched local repo, no remote hooks or config, incremental."""

from __future__ import annotations

import pytest

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from testnet import in_ns


pytestmark = pytest.mark.l4


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def snapshot(repo: Path) -> dict[str, str]:
    """Hashes of the work tree, HEAD, index, config, hooks and stash: everything pull must not touch."""
    out = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo)
        if rel.parts[0] == ".git" and rel.parts[1:2] not in ((), ("HEAD",), ("index",), ("config",), ("hooks",), ("info",)):
            continue
        if path.is_file():
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[str(rel)] = "dir"
    out["@stash"] = subprocess.run(["git", "stash", "list"], cwd=repo, capture_output=True, text=True).stdout
    out["@status"] = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=repo, capture_output=True, text=True).stdout
    return out


def session_ids(l4) -> list[str]:
    return [s["id"] for s in l4.sessions() if s["backend"] == "tailnet"]


def test_remote_work_comes_back_as_a_ref_and_nothing_local_moves(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo(files={"notes.txt": "local uncommitted edit\n", "build/out.o": "ignored\n", ".gitignore": "build/\n"})
    git(repo, "add", "notes.txt")  # something staged, to see the index stays as it is
    (repo / "file0.txt").write_text("unstaged local change\n")
    before = snapshot(repo)
    head = git(repo, "rev-parse", "HEAD")
    script = "echo changed remotely > file0.txt && echo brand new > new.txt && rm notes.txt && git add new.txt && git -c user.name=a -c user.email=a@b commit -qm 'agent commit'"
    proc = l4.posture("exec", "--level", "l4", "--", "sh", "-c", script, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    sid = session_ids(l4)[-1]
    assert snapshot(repo) == before

    proc = l4.posture("pull", "--session", sid, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    ref = f"refs/posture/{sid}/pull-1"
    assert ref in proc.stdout + proc.stderr
    assert "file0.txt" in proc.stdout and "new.txt" in proc.stdout and "notes.txt" in proc.stdout  # git diff --stat
    assert git(repo, "show", f"{ref}:file0.txt") == "changed remotely"
    assert git(repo, "show", f"{ref}:new.txt") == "brand new"
    assert "agent commit" in git(repo, "log", "--format=%s", ref)
    checkpoint = git(repo, "rev-parse", f"refs/posture/{sid}/checkpoint-1")
    assert git(repo, "merge-base", "--is-ancestor", checkpoint, ref) == ""
    # the checkpoint carried the local uncommitted work out
    assert git(repo, "show", f"{checkpoint}:notes.txt") == "local uncommitted edit"
    assert git(repo, "show", f"{checkpoint}:file0.txt") == "unstaged local change"
    # byte for byte: work tree, HEAD, index, config, hooks, stash, status
    assert snapshot(repo) == before and git(repo, "rev-parse", "HEAD") == head
    # a second pull with nothing new reuses the ref
    again = l4.posture("pull", "--session", sid, cwd=repo)
    assert again.returncode == 0 and ref in again.stdout + again.stderr and "nothing new" in again.stderr
    # the host kept the bare repo (for the next sync) but not the session's work tree
    assert (l4.vps.home / l4.workdir / "repos").is_dir()
    assert not (l4.vps.home / l4.workdir / "sessions" / sid).exists()


def test_malicious_remote_hooks_and_fsmonitor_neither_run_nor_come_back(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo()
    marks = Path(tempfile.mkdtemp(prefix="posture-marks-"))  # in /tmp: the host's user must be able to write there
    os.chmod(marks, 0o1777)
    try:
        _malicious_remote(l4, make_repo, repo, marks)
    finally:
        shutil.rmtree(marks, ignore_errors=True)


def _malicious_remote(l4, make_repo, repo: Path, marks: Path) -> None:
    log = marks / "ran"
    hook = f"#!/bin/sh\necho \"$(id -un) $0\" >> {log}\n"
    hooks = ("post-checkout", "post-merge", "post-rewrite", "reference-transaction", "pre-push", "post-index-change",
             "pre-commit", "pre-auto-gc", "fsmonitor-watchman", "pre-receive", "post-receive", "update", "post-update", "push-to-checkout")
    install = "; ".join(f"printf %s {_sq(hook)} > \"$gd/hooks/{h}\" && chmod +x \"$gd/hooks/{h}\"" for h in hooks)
    evil = (
        'gd=$(git rev-parse --git-common-dir) && mkdir -p "$gd/hooks" && '
        f'{install} && '
        f'git config -f "$gd/config" core.fsmonitor "echo fsmonitor >> {log}" && '
        f'git config -f "$gd/config" core.hooksPath "$gd/hooks" && '
        f'git config -f "$gd/config" uploadpack.packObjectsHook "echo packhook >> {log}; false" && '
        f'git config -f "$gd/config" core.sshCommand "echo sshcommand >> {log}" && '
        'echo payload > payload.txt'
    )
    local_config = (repo / ".git" / "config").read_bytes()
    local_hooks = sorted(p.name for p in (repo / ".git" / "hooks").iterdir())
    before = snapshot(repo)
    proc = l4.posture("exec", "--level", "l4", "--", "sh", "-c", evil, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    sid = session_ids(l4)[-1]
    proc = l4.posture("pull", "--session", sid, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    # control: the legitimate path works, the work came back
    assert git(repo, "show", f"refs/posture/{sid}/pull-1:payload.txt") == "payload"
    # nothing of the remote's config or hooks came back
    assert (repo / ".git" / "config").read_bytes() == local_config
    assert sorted(p.name for p in (repo / ".git" / "hooks").iterdir()) == local_hooks
    assert subprocess.run(["git", "config", "--get", "core.fsmonitor"], cwd=repo, capture_output=True).stdout == b""
    # local git keeps running nothing of the remote's
    git(repo, "status")
    git(repo, "diff", "--stat", f"refs/posture/{sid}/checkpoint-1", f"refs/posture/{sid}/pull-1")
    assert snapshot(repo) == before
    assert not log.exists(), log.read_text()
    # control: the marker does fire when such config is really in effect (here, in a throwaway repo)
    ctl = make_repo(name="control")
    git(ctl, "config", "core.fsmonitor", f"echo fsmonitor >> {log}")
    subprocess.run(["git", "status"], cwd=ctl, capture_output=True)
    assert "fsmonitor" in log.read_text()


def _sq(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def gw_bytes(l4) -> int:
    """Bytes through the GW namespace's interfaces (rx + tx), from its /proc/net/dev."""
    text = in_ns(l4.net.gw, "cat", "/proc/net/dev").stdout
    total = 0
    for line in text.splitlines()[2:]:
        name, data = line.split(":", 1)
        if name.strip() == "lo":
            continue
        fields = data.split()
        total += int(fields[0]) + int(fields[8])
    return total


def test_incremental_sync_sends_only_what_changed(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo()
    rng = random.Random(7)
    for d in range(40):
        (repo / f"d{d:02}").mkdir()
        for f in range(75):  # 3,000 files of incompressible content, ~3 MB
            (repo / f"d{d:02}" / f"f{f:03}.bin").write_bytes(rng.randbytes(1024))
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "3000 files")

    def run(*argv: str) -> int:
        start = gw_bytes(l4)
        proc = l4.posture("exec", "--level", "l4", "--", *argv, cwd=repo)
        assert proc.returncode == 0, proc.stderr
        return gw_bytes(l4) - start

    first = run("true")
    (repo / "d07" / "f003.bin").write_bytes(rng.randbytes(1024))
    second = run("sha256sum", "d07/f003.bin")
    third = run("true")  # nothing changed at all
    assert first > 3_000_000, first
    assert second < 60_000, (first, second)
    assert third < 60_000, (first, third)
    sids = session_ids(l4)[-3:]
    bare = next((l4.vps.home / l4.workdir / "repos").iterdir())
    refs = subprocess.run(["git", "--git-dir", str(bare), "for-each-ref", "--format=%(refname)"], capture_output=True, text=True).stdout
    for sid in sids:
        assert f"refs/posture/{sid}/checkpoint-1" in refs
    print(f"incremental sync: first session {first} bytes, one-file change {second} bytes, no change {third} bytes")


ESCALATE = r"""
import sys
from pathlib import Path
from posture import checkpoint
from posture.plugins import backend_named, load_settings
from posture.session import SessionRecord, StartSpec, new_id

repo = Path(sys.argv[1])
parent = checkpoint.capture(repo, "lower-session", "escalating")
(repo / "after.txt").write_text("written after the checkpoint\n")  # must not travel: the checkpoint is the truth
record = SessionRecord(id=new_id(), project=str(repo), level="l4", backend="tailnet", profile="shell", parent="lower-session")
s = backend_named("tailnet").session(record, load_settings(repo))
s.start(StartSpec(checkpoint=parent.ref))
try:
    code = s.exec(["sh", "-c", "cat carried.txt; test ! -e after.txt"], tty=False)
finally:
    s.stop()
print("code", code, s.record.data["checkpoint_commit"] == parent.commit)
"""


def test_escalation_starts_from_the_lower_sessions_checkpoint(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo(files={"carried.txt": "uncommitted work of the lower level\n"})
    proc = l4.python(ESCALATE, str(repo))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["uncommitted work of the lower level", "code 0 True"], proc.stdout


def test_project_outside_git_goes_and_comes_back(l4, tmp_path: Path) -> None:
    l4.enroll()
    project = tmp_path / "plain-dir"
    project.mkdir()
    (project / "readme.txt").write_text("not in git\n")
    proc = l4.posture("exec", "--level", "l4", "--", "sh", "-c", "cat readme.txt && echo remote > out.txt", cwd=project)
    assert proc.returncode == 0 and proc.stdout == "not in git\n", proc.stderr
    sid = session_ids(l4)[-1]
    proc = l4.posture("pull", "--session", sid, cwd=project)
    assert proc.returncode == 0 and "out.txt" in proc.stdout, proc.stderr
    assert sorted(p.name for p in project.iterdir()) == ["readme.txt"]  # nothing written into the directory
