"""Move code to the L4 host and work back, with git over posture's pinned SSH connection.

Out: the checkpoint commit is pushed into a bare repository on the host (one per
project, kept between sessions, so later pushes send only new objects), then checked
out into a per-session work tree there. Back: the work tree is committed on the host
(temporary index, parent = its HEAD) to refs/posture/<session>/work in the bare repo,
and fetched into refs/posture/<session>/pull-N here. Fetching writes objects and that
one ref: it never merges, checks out, touches HEAD/index/work tree, copies the remote's
config or hooks, or runs anything of the remote's.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from .. import checkpoint, gitutil
from ..errors import Unavailable
from .relay import REMOTE_GIT, relay
from .ssh import run_script

GIT_AUTHOR = "GIT_AUTHOR_NAME=posture GIT_AUTHOR_EMAIL=posture@localhost GIT_COMMITTER_NAME=posture GIT_COMMITTER_EMAIL=posture@localhost"
# Settings for every local git call that talks to the host.
LOCAL_TRANSPORT = (
    "-c", "protocol.allow=never",
    "-c", "protocol.ssh.allow=always",
    "-c", "push.recurseSubmodules=no",
    "-c", "submodule.recurse=false",
    "-c", "fetch.recurseSubmodules=false",
    "-c", "transfer.fsckObjects=true",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "credential.helper=",
)
URL_HOST = "posture-l4"


@dataclass(frozen=True)
class Layout:
    """Where things live on the host, relative to the login directory unless absolute."""

    workdir: str

    @classmethod
    def from_config(cls, workdir: str | None) -> "Layout":
        """`[l4] workdir` (default "posture"; a leading ~/ means the login directory)."""
        text = (workdir or "posture").strip()
        if text in ("~", "~/"):
            text = "."
        elif text.startswith("~/"):
            text = text[2:]
        return cls(text.rstrip("/") or "/")

    def bare(self, project_key: str) -> str:
        """The project's bare repository (kept for incremental sync)."""
        return f"{self.workdir}/repos/{project_key}.git"

    def worktree(self, session: str) -> str:
        """The session's work tree (removed at stop)."""
        return f"{self.workdir}/sessions/{session}"


def _local(project: Path) -> list[str]:
    args, _ = checkpoint._repo_args(project)
    return args


def _git_or_unavailable(project: Path, what: str, *args: str, env: dict[str, str]) -> str:
    try:
        return gitutil.out(project, *_local(project), *LOCAL_TRANSPORT, *args, env=env)
    except gitutil.GitError as exc:
        raise Unavailable(f"{what} failed: {exc}", fix="check `posture doctor` (git on the host, disk space)") from None


def push(client, project: Path, commit: str, ref: str, bare: str) -> None:
    """Push `commit` as `ref` into `bare` on the host (created if missing); only missing objects travel."""
    with relay(client, bare) as r:
        try:
            gitutil.git(project, *_local(project), *LOCAL_TRANSPORT, "push", "--no-verify", "--quiet", "--no-recurse-submodules",
                        f"{URL_HOST}:{bare}", f"{commit}:{ref}", env=r.env())
        except gitutil.GitError as exc:
            detail = "; ".join(r.errors) or str(exc)
            raise Unavailable(f"sending the checkpoint to the host failed: {detail}", fix="check `posture doctor` (git on the host, disk space)") from None


def _q(text: str) -> str:
    return shlex.quote(text)


REMOTE_GIT_SH = " ".join(shlex.quote(w) for w in REMOTE_GIT)


def checkout(client, bare: str, worktree: str, commit: str) -> tuple[str, str]:
    """Check `commit` out into a fresh work tree on the host; return (login directory, work tree), absolute."""
    script = (
        f"set -e; pwd -P; G={_q(REMOTE_GIT_SH)}; "
        f"rm -rf {_q(worktree)}; $G --git-dir={_q(bare)} worktree prune; "
        f"mkdir -p \"$(dirname {_q(worktree)})\"; "
        f"$G --git-dir={_q(bare)} worktree add --quiet --detach {_q(worktree)} {_q(commit)} >/dev/null; "
        f"cd {_q(worktree)} && pwd -P"
    )
    code, out, err = run_script(client, script)
    if code != 0:
        raise Unavailable(f"checking the checkpoint out on the host failed: {err.strip()[-300:]}", fix="check `posture doctor` (git on the host, disk space)")
    lines = out.strip().splitlines()
    return lines[0], lines[-1]


def capture_remote(client, worktree: str, ref: str, message: str) -> str | None:
    """Commit the host's work tree (tracked, deleted, untracked-not-ignored) to `ref`; its id, or None when the tree is gone."""
    script = (
        f"cd {_q(worktree)} 2>/dev/null || exit 3; set -e; G={_q(REMOTE_GIT_SH)}; "
        "gd=$($G rev-parse --git-dir); idx=$(mktemp); rm -f \"$idx\"; trap 'rm -f \"$idx\"' EXIT; "
        "if [ -f \"$gd/index\" ]; then cp \"$gd/index\" \"$idx\"; fi; export GIT_INDEX_FILE=\"$idx\"; "
        f"export {GIT_AUTHOR}; "
        "$G add --all -- . ; tree=$($G write-tree); head=$($G rev-parse --verify HEAD); "
        "if [ \"$($G rev-parse HEAD^{tree})\" = \"$tree\" ]; then c=$head; "
        f"else c=$($G commit-tree \"$tree\" -p \"$head\" -m {_q(message)}); fi; "
        f"$G update-ref {_q(ref)} \"$c\"; echo \"$c\""
    )
    code, out, err = run_script(client, script)
    if code == 3:
        return None
    if code != 0:
        raise Unavailable(f"committing the session's work on the host failed: {err.strip()[-300:]}", fix="check the session's work tree on the host (`posture exec --session ID -- git status`)")
    return out.strip().splitlines()[-1]


def remote_ref_exists(client, bare: str, ref: str) -> str | None:
    """The commit `ref` names in `bare` on the host, or None."""
    code, out, _ = run_script(client, f"{REMOTE_GIT_SH} --git-dir={_q(bare)} rev-parse --verify --quiet {_q(ref + '^{commit}')}")
    return out.strip() if code == 0 and out.strip() else None


def fetch(client, project: Path, bare: str, remote_ref: str, local_ref: str) -> str:
    """Fetch `remote_ref` of `bare` into `local_ref` here (objects and that ref only); return the commit."""
    with relay(client, bare) as r:
        try:
            gitutil.git(project, *_local(project), *LOCAL_TRANSPORT, "fetch", "--quiet", "--no-tags", "--no-recurse-submodules",
                        "--no-write-fetch-head", "--no-auto-gc", "--no-auto-maintenance", "--no-show-forced-updates",
                        f"{URL_HOST}:{bare}", f"+{remote_ref}:{local_ref}", env=r.env())
        except gitutil.GitError as exc:
            detail = "; ".join(r.errors) or str(exc)
            raise Unavailable(f"fetching the session's work from the host failed: {detail}", fix="check `posture doctor`") from None
    return gitutil.out(project, *_local(project), "rev-parse", "--verify", local_ref + "^{commit}")


def remove_worktree(client, bare: str, worktree: str) -> None:
    """Delete the session's work tree on the host (the bare repository and its refs stay)."""
    script = f"rm -rf {_q(worktree)}; {REMOTE_GIT_SH} --git-dir={_q(bare)} worktree prune 2>/dev/null; true"
    run_script(client, script)


def pull_refs(project: Path, session: str) -> list[str]:
    """Local refs/posture/<session>/pull-N refs, oldest first."""
    proc = gitutil.git(project, *_local(project), "for-each-ref", "--format=%(refname)", f"refs/posture/{session}/", check=False)
    refs = [r for r in proc.stdout.decode().split() if "/pull-" in r]
    return sorted(refs, key=lambda r: int(r.rsplit("-", 1)[1]))


def resolve(project: Path, ref: str) -> str | None:
    """The commit `ref` names locally, or None."""
    proc = gitutil.git(project, *_local(project), "rev-parse", "--verify", "--quiet", ref + "^{commit}", check=False)
    return proc.stdout.decode().strip() or None


def diff_stat(project: Path, base: str, commit: str) -> str:
    """`git diff --stat base commit`, computed from objects only (no work tree, no index, no drivers)."""
    return gitutil.out(project, *_local(project), "diff", "--stat", "--no-ext-diff", "--no-textconv", "--no-color", base, commit)
