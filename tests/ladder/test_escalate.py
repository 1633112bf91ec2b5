"""`posture escalate` with the real backends: the work moves up intact, nothing of the user's
moves, the lower session is gone, the audit log holds the chain; faults leave the work safe."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from support import git
from ladder.conftest import Ladder

pytestmark = [pytest.mark.root, pytest.mark.l2, pytest.mark.l3, pytest.mark.l4]

# The agent's work: a tracked change, an untracked file, a deletion, a binary file, a name with a space and unicode.
AGENT_WORK = r"""
set -e
echo "changed by the agent" >> README.md
echo "brand new" > new.txt
rm doomed.txt
head -c 4096 /dev/urandom > blob.bin
mkdir -p "dir with space"
printf 'ünïcödé\n' > "dir with space/naïve file.txt"
"""

# Inside any session: a listing of the project's work tree (content hashes), .git excluded.
TREE = r"""find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha256sum"""


def _placeholders(project: Path) -> list[str]:
    """posture's empty stand-ins for protected paths while a local session runs: not the user's work."""
    from posture import placeholders

    return [os.path.relpath(p, project) for p in placeholders.held(project)]


def host_tree(project: Path, skip: list[str] | None = None) -> str:
    proc = subprocess.run(["sh", "-c", TREE], cwd=project, capture_output=True, text=True, check=True)
    skip = skip if skip is not None else _placeholders(project)
    return "".join(line + "\n" for line in proc.stdout.splitlines() if line.split("  ./", 1)[1] not in skip)


EMPTY = hashlib.sha256(b"").hexdigest()


def without_stand_ins(listing: str) -> str:
    """A tree listing from inside a local session, less posture's empty read-only stand-ins for
    protected paths that do not exist on the host (they are not the user's work)."""
    from posture.view import PROTECTED_DEFAULT

    def stand_in(line: str) -> bool:
        digest, path = line.split("  ./", 1)
        return digest == EMPTY and any(path == p or path.startswith(p + "/") for p in PROTECTED_DEFAULT)

    return "".join(line + "\n" for line in listing.splitlines() if not stand_in(line))


def user_state(project: Path) -> dict[str, str]:
    """HEAD, index bytes, stash, and the work tree, as the user would notice them (posture's placeholders aside)."""
    skip = _placeholders(project)
    status = git(project, "status", "--porcelain=v2", "--untracked-files=all").splitlines()
    return {
        "HEAD": git(project, "rev-parse", "HEAD"),
        "index": hashlib.sha256((project / ".git" / "index").read_bytes()).hexdigest(),
        "stash": git(project, "stash", "list"),
        "tree": host_tree(project, skip),
        "status": "\n".join(line for line in status if not (line.startswith("? ") and line[2:].rstrip("/") in skip)),
    }


def start_with_work(ladder: Ladder, make_repo, level: str = "l2") -> tuple[Path, str]:
    repo = make_repo(files={"doomed.txt": "delete me\n", "README.md": "hello\n"})
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    (repo / "README.md").write_text("hello\nstashed\n")
    git(repo, "stash")
    out = ladder.ok("up", str(repo), "--level", level, "--detach", "--", "sleep", "100000")
    sid = out.strip().splitlines()[-1]
    ladder.ok("exec", "--session", sid, "--", "sh", "-c", AGENT_WORK)
    return repo, sid


def events(ladder: Ladder) -> list[dict]:
    assert ladder.user is not None
    return [json.loads(line) for line in (ladder.user.state / "audit.log").read_text().splitlines()]


def _record(ladder: Ladder, sid: str) -> dict:
    assert ladder.user is not None
    return json.loads((ladder.user.state / "sessions" / f"{sid}.json").read_text())


def _pid_alive(pid: int | None) -> bool:
    return bool(pid) and Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _domains(ladder: Ladder) -> set[str]:
    import libvirt

    conn = libvirt.open(ladder.libvirt_uri)
    try:
        return {d.name() for d in conn.listAllDomains()}
    finally:
        conn.close()


def assert_gone(ladder: Ladder, sid: str) -> None:
    """No process (or VM) of the lower session is left."""
    rec = _record(ladder, sid)
    assert not _pid_alive(rec.get("keeper_pid")), "the lower session's keeper survived"
    data = rec["data"]
    for key in ("bwrap_pid", "child_pid"):
        assert not _pid_alive(data.get(key)), f"the lower session's {key} survived"
    if data.get("box"):
        import time

        from posture.netd import cgroups

        box = cgroups.path_of(data["box"])
        assert not box.exists() or not (box / "cgroup.procs").read_text().split(), "a process of the lower session survived"
        deadline = time.monotonic() + 5  # the network helper removes the cgroup itself, after posture returns
        while box.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not box.exists(), "the lower session's cgroup survived"
    if rec["level"] == "l3":
        assert not [d for d in _domains(ladder) if sid in d], "the lower session's VM survived"


PAIRS = [("l2", "l3"), ("l2", "l4"), ("l3", "l4")]


@pytest.mark.parametrize("low,high", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_escalation_moves_the_work_and_nothing_else(ladder: Ladder, make_repo, low: str, high: str) -> None:
    repo, sid = start_with_work(ladder, make_repo, low)
    lower = ladder.sessions()[sid]
    assert lower["level"] == low and lower["status"] == "running"
    before = user_state(repo)
    assert "new.txt" in before["tree"] and "doomed.txt" not in before["tree"]

    out = ladder.ok("escalate", "--session", sid, "--to", high, "--reason", "a stranger's PR")
    child = out.strip().splitlines()[-1]

    sessions = ladder.sessions()
    assert sessions[child]["level"] == high and sessions[child]["parent"] == sid and sessions[child]["status"] == "running"
    assert sessions[sid]["status"] == "escalated"
    # the higher session sees exactly the tree the lower one left
    remote = ladder.ok("exec", "--session", child, "--", "sh", "-c", TREE)
    assert without_stand_ins(remote) == before["tree"]
    # the user's HEAD, index, stash and work tree are byte for byte as they were
    assert user_state(repo) == before
    # the lower session's processes (or VM) are gone
    assert_gone(ladder, sid)
    # the checkpoint ref holds the work
    ref = f"refs/posture/{sid}/checkpoint-1"
    names = set(git(repo, "-c", "core.quotePath=false", "ls-tree", "-r", "--name-only", ref).splitlines())
    assert {"new.txt", "blob.bin", "dir with space/naïve file.txt"} <= names and "doomed.txt" not in names
    # the audit log holds the whole chain and verifies
    kinds = [e["event"] for e in events(ladder) if e["data"].get("session") in (sid, child)]
    for step in ("escalate.begin", "escalate.checkpoint", "escalate.freeze", "escalate.start", "escalate.launch", "escalate.done"):
        assert step in kinds, kinds
    ladder.ok("audit", "verify")
    # the project is ratcheted until the user says otherwise
    doc = json.loads(ladder.ok("explain", str(repo), "--json"))
    assert doc["ratchet"]["level"] == high and doc["level"] == high
    ladder.ok("trust", str(repo))
    assert json.loads(ladder.ok("explain", str(repo), "--json"))["ratchet"] is None


def test_no_kernel_for_l3_leaves_the_work_safe(ladder: Ladder, make_repo) -> None:
    repo, sid = start_with_work(ladder, make_repo, "l2")
    assert ladder.user is not None
    config = ladder.user.config_file.read_text()
    ladder.user.write_config(config.replace("[l3]\n", '[l3]\nkernel = "/nonexistent/vmlinuz"\n'))
    try:
        failed = ladder.posture("escalate", "--session", sid, "--to", "l3")
        assert failed.returncode == 69, failed.stderr
        assert "work is safe" in failed.stderr and ladder.sessions()[sid]["status"] == "frozen"
        assert git(repo, "rev-parse", "--verify", f"refs/posture/{sid}/checkpoint-1")
    finally:
        ladder.user.write_config(config)
    child = ladder.ok("escalate", "--session", sid).strip().splitlines()[-1]
    assert ladder.ok("exec", "--session", child, "--", "cat", "new.txt") == "brand new\n"


def test_refusals(ladder: Ladder, make_repo) -> None:
    repo, sid = start_with_work(ladder, make_repo)
    down = ladder.posture("escalate", "--session", sid, "--to", "l2")
    assert down.returncode == 77 and "only moves a task up" in down.stderr
    missing = ladder.posture("escalate", "--session", "nope-123", "--to", "l4")
    assert missing.returncode == 64 and "no session" in missing.stderr
    child = ladder.ok("escalate", "--session", sid, "--to", "l4").strip().splitlines()[-1]
    top = ladder.posture("escalate", "--session", child)
    assert top.returncode == 77 and "top of the ladder" in top.stderr
    again = ladder.posture("escalate", "--session", sid, "--to", "l4")
    assert again.returncode == 64


def test_higher_backend_failing_leaves_the_work_safe_then_retry(ladder: Ladder, make_repo) -> None:
    repo, sid = start_with_work(ladder, make_repo)
    ladder.tailnet(Online=False)
    failed = ladder.posture("escalate", "--session", sid, "--to", "l4")
    assert failed.returncode == 69, failed.stderr
    assert "work is safe" in failed.stderr
    status = ladder.sessions()[sid]
    assert status["status"] == "frozen"
    assert "Retry: `posture escalate --session" in status["note"] and "--abort" in status["note"]
    assert git(repo, "rev-parse", "--verify", f"refs/posture/{sid}/checkpoint-1")
    # frozen: the lower session cannot act, but its work is on disk and in the ref
    assert (repo / "new.txt").read_text() == "brand new\n"
    ladder.tailnet()
    child = ladder.ok("escalate", "--session", sid).strip().splitlines()[-1]
    assert ladder.sessions()[child]["level"] == "l4"
    assert ladder.ok("exec", "--session", child, "--", "cat", "new.txt") == "brand new\n"


def test_abort_thaws_the_lower_session(ladder: Ladder, make_repo) -> None:
    repo, sid = start_with_work(ladder, make_repo)
    ladder.tailnet(Expired=True)
    assert ladder.posture("escalate", "--session", sid, "--to", "l4").returncode == 69
    assert ladder.sessions()[sid]["status"] == "frozen"
    ladder.ok("escalate", "--session", sid, "--abort")
    assert ladder.sessions()[sid]["status"] == "running"
    assert ladder.ok("exec", "--session", sid, "--", "cat", "new.txt") == "brand new\n"


@pytest.mark.parametrize("step", ["freeze", "start", "launch", "stop"])
def test_posture_killed_between_steps_resumes(ladder: Ladder, make_repo, step: str) -> None:
    repo, sid = start_with_work(ladder, make_repo)
    killed = ladder.posture("escalate", "--session", sid, "--to", "l4", env={"POSTURE_FAULT_AT": step})
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    status = ladder.sessions()[sid]
    assert f"at step '{step}'" in status["note"] and "checkpoint-1" in status["note"]
    assert git(repo, "rev-parse", "--verify", f"refs/posture/{sid}/checkpoint-1")
    child = ladder.ok("escalate", "--session", sid).strip().splitlines()[-1]
    sessions = ladder.sessions()
    assert sessions[child]["level"] == "l4" and sessions[sid]["status"] == "escalated"
    assert ladder.ok("exec", "--session", child, "--", "cat", "dir with space/naïve file.txt") == "ünïcödé\n"
    live_l4 = [s for s in sessions.values() if s["level"] == "l4" and s["status"] == "running"]
    assert len(live_l4) == 1, "a resumed escalation must not leave a second higher session behind"
