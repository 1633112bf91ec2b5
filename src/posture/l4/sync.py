"""Move code to the L4 host and work back, with git over posture's pinned SSH connection.

Out: the checkpoint commit is pushed into a bare repository on the host (one per
project, kept between sessions, so later pushes send only new objects), then put into a
per-session work tree there: the project's spare tree (left by a stopped session, claimed by
an atomic rename, brought to the checkpoint exactly with reset --hard and clean -ffdx) when
there is one, else a full checkout. Back: the work tree is committed on the host
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
        """The session's work tree (kept as the project's spare, or removed, at stop)."""
        return f"{self.workdir}/sessions/{session}"

    def spare(self, project_key: str) -> str:
        """The project's spare work trees: left by stopped sessions, claimed by the next ones."""
        return f"{self.workdir}/spare/{project_key}"


def _local(project: Path) -> list[str]:
    args, _ = checkpoint._repo_args(project)
    return args


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


# Work trees are registered with git (so the bare repository's gc sees their HEAD and index) and
# locked, so that no `worktree prune` ever drops a tree while it moves between a session and the
# spare pool. posture removes a tree's admin directory itself when it deletes the tree.
_CHECKOUT = r"""
set -e; H=$(pwd -P)
G=$1; B=$2; W=$3; S=$4; C=$5; shift 5
{
mkdir -p "$(dirname "$W")"
Babs=$(cd "$B" && pwd -P)
name=; mode=; Wabs=
for d in "$S"/*; do
  [ -d "$d" ] || continue
  n=${d##*/}
  # rename(2) is atomic: of two sessions racing for one spare, exactly one wins it
  if mv -T "$d" "$W" 2>/dev/null; then name=$n; break; fi
done
if [ -n "$name" ]; then
  A="$Babs/worktrees/$name"
  Wabs=$(cd "$W" && pwd -P)
  # the pointers are rewritten, not trusted (the last session's agent could have changed them);
  # `set -e` does not hold inside an `if` condition, hence the && chain
  if [ -d "$A" ] && ! [ -L "$A" ] \
     && rm -rf "$W/.git" "$A/config.worktree" "$A/sequencer" "$A/rebase-merge" "$A/rebase-apply" \
     && printf 'gitdir: %s\n' "$A" > "$W/.git" \
     && printf '%s/.git\n' "$Wabs" > "$A/gitdir" \
     && printf '../..\n' > "$A/commondir" \
     && printf 'posture session\n' > "$A/locked" \
     && $G --git-dir="$A" update-ref --no-deref HEAD "$C" \
     && (cd "$W" && $G -c core.sparseCheckout=false --git-dir="$A" --work-tree=. reset --quiet --no-recurse-submodules --hard "$C" >&2 \
         && $G --git-dir="$A" --work-tree=. clean -ffdxq >&2); then
    mode=spare
  else
    rm -rf "$W" "$A"
  fi
fi
if [ -z "$mode" ]; then
  rm -rf "$W"
  $G --git-dir="$B" worktree prune
  $G --git-dir="$B" worktree add --quiet --lock --detach "$W" "$C" >/dev/null
  A=$(cd "$W" && $G rev-parse --absolute-git-dir)
  name=${A##*/}; mode=full; Wabs=$(cd "$W" && pwd -P)
fi
} </dev/null
echo "$H"; echo "$mode"; echo "$name"; echo "$Wabs"
"""


@dataclass(frozen=True)
class Checkout:
    """Where a session's work tree is on the host, and how it got there."""

    home: str  # the login directory, absolute
    worktree: str  # the work tree, absolute
    admin: str  # the tree's name under <bare>/worktrees/
    reused: bool  # True when a spare tree was brought up to date, False after a full checkout
    more: tuple[str, ...] = ()  # what the `then` script printed


def checkout(client, bare: str, worktree: str, commit: str, spare: str | None = None,
             then: str = "", then_args: list[str] | None = None, stdin: bytes = b"") -> Checkout:
    """Put exactly `commit` into the work tree `worktree` on the host.

    A spare tree of the project (`spare`, left by an earlier session) is claimed by an atomic
    rename and brought to `commit` incrementally (reset --hard, then clean -ffdx: the tree equals
    the commit exactly, ignored leftovers too; hooks and fsmonitor off); without one, a full
    checkout is made. `then` is more shell run in the same round trip right after, with
    $H (login directory) and $Wabs (work tree) set, `then_args` as "$@" and `stdin` as its input.
    """
    script = _CHECKOUT.strip() + "\n" + then
    args = [REMOTE_GIT_SH, bare, worktree, spare or "/nonexistent/posture-no-spare", commit, *(then_args or [])]
    code, out, err = run_script(client, script, argv=args, stdin=stdin)
    if code != 0:
        raise Unavailable(f"starting the session on the host failed: {err.strip()[-300:]}", fix="check `posture doctor` (git on the host, disk space)")
    lines = out.strip().splitlines()
    return Checkout(home=lines[0], reused=lines[1] == "spare", admin=lines[2], worktree=lines[3], more=tuple(lines[4:]))


_RETIRE = r"""
G=$1; B=$2; W=$3; S=$4; name=$5; id=$6; keep=$7
H=$(pwd)
cd "$W" 2>/dev/null || exit 0
Wabs=$(pwd -P); cd "$H"
A="$B/worktrees/$name"
busy() {
  grep -qsxzF "POSTURE_SESSION=$id" /proc/[0-9]*/environ && return 0
  for p in /proc/[0-9]*; do
    case $(readlink "$p/cwd" 2>/dev/null) in "$Wabs"|"$Wabs"/*) return 0;; esac
  done
  return 1
}
i=0
while busy && [ $i -lt 10 ]; do sleep 0.1; i=$((i+1)); done
if [ "$keep" -gt 0 ] && [ -n "$name" ] && [ -d "$A" ] && ! busy; then
  mkdir -p "$S"
  count=$(ls -1 "$S" | wc -l)
  if [ "$count" -lt "$keep" ] && mv -T "$W" "$S/$name" 2>/dev/null; then echo kept; exit 0; fi
fi
rm -rf "$W"; [ -n "$name" ] && rm -rf "$A"
$G --git-dir="$B" worktree prune 2>/dev/null
echo removed
"""

SPARES_PER_PROJECT = 2


def retire_worktree(client, bare: str, worktree: str, admin: str | None, spare: str | None, session: str) -> bool:
    """At a session's stop (its work already captured): keep the tree as the project's spare, or
    delete it. A tree is kept only when no process of the session is left (none with its
    POSTURE_SESSION or its cwd in the tree) and the pool has room; True when kept."""
    keep = SPARES_PER_PROJECT if (spare and admin) else 0
    args = [REMOTE_GIT_SH, bare, worktree, spare or "/nonexistent", admin or "", session, str(keep)]
    code, out, _ = run_script(client, _RETIRE.strip(), argv=args)
    return code == 0 and out.strip().endswith("kept")


def capture_remote(client, worktree: str, ref: str, message: str) -> str | None:
    """Commit the host's work tree (tracked, deleted, untracked-not-ignored) to `ref`; its id, or None when the tree is gone."""
    script = (
        f"cd {_q(worktree)} 2>/dev/null || exit 3; set -e; G={_q(REMOTE_GIT_SH)}; "
        "gd=$($G rev-parse --git-dir); idx=$(mktemp); rm -f \"$idx\"; trap 'rm -f \"$idx\"' EXIT; "
        "if [ -f \"$gd/index\" ]; then cp \"$gd/index\" \"$idx\"; fi; export GIT_INDEX_FILE=\"$idx\"; "
        f"export {GIT_AUTHOR}; "
        "$G add --all -- . ; tree=$($G write-tree); head=$($G rev-parse --verify HEAD); "
        f"old=$($G rev-parse -q --verify {_q(ref + '^{commit}')} || true); "
        "if [ \"$($G rev-parse HEAD^{tree})\" = \"$tree\" ]; then c=$head; "
        # the same work as the last capture: keep its commit, so a later pull finds nothing new
        "elif [ -n \"$old\" ] && [ \"$($G rev-parse \"$old^{tree}\")\" = \"$tree\" ] && [ \"$($G rev-parse -q --verify \"$old^\")\" = \"$head\" ]; then c=$old; "
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
