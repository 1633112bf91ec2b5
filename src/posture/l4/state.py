"""Carry the per-project agent state to the L4 host, so the agent continues its conversation.

What travels: the view's state binds (entries of `view.binds` whose source is under
`view.state_dir`, e.g. ~/.claude and ~/.claude.json of the project's state home), as a tar
stream over the pinned connection. What never travels: the profile's credential files (the
agent's own credentials on the host are the host's business), wherever they sit in the state.

Where it lands: one state home per project and profile on the host,
`<workdir>/state/<project key>/<profile>/home`, kept between sessions (a later L4 session of the
project continues too; files newer on the host than the ones sent are kept). The agent runs with
HOME set to it, like L2's per-project state home. The host's own credential files (the profile's
`credentials.files`, from the login user's real home) are linked into it, so the agent logs in
with the host's credentials.

Keyed history: for each `state.project_keyed` directory of the profile (Claude Code's
~/.claude/projects), entries are named after the agent's working directory. The local project's
entry is the project's one on the host, and the session's work tree key (its own path on the host,
different every session) is a symlink to it.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path
from typing import Any


def path_key(path: str) -> str:
    """The key an agent files a working directory's history under: non-alphanumerics become '-'."""
    return re.sub(r"[^A-Za-z0-9]", "-", path)


def _credential(rel: str, credentials: list[str]) -> bool:
    return any(rel == c or rel.startswith(c.rstrip("/") + "/") for c in credentials)


def carried(view: Any, credentials: list[str]) -> list[tuple[str, str]]:
    """(local path, home-relative name) of every state file to send; credential files left out."""
    if view is None or not getattr(view, "state_dir", ""):
        return []
    state = os.path.realpath(view.state_dir)
    out: list[tuple[str, str]] = []
    for bind in view.binds:
        source = os.path.realpath(bind.source)
        if not (source == state or source.startswith(state + "/")) or not os.path.lexists(bind.source):
            continue
        rel = os.path.relpath(bind.target, view.home)
        if rel.startswith("..") or _credential(rel, credentials):
            continue
        if os.path.isdir(bind.source) and not os.path.islink(bind.source):
            for root, dirs, files in os.walk(bind.source):
                rel_root = os.path.normpath(os.path.join(rel, os.path.relpath(root, bind.source)))
                dirs[:] = [d for d in dirs if not _credential(os.path.join(rel_root, d), credentials)]
                for name in [*dirs, *files]:
                    item = os.path.join(rel_root, name)
                    if not _credential(item, credentials):
                        out.append((os.path.join(root, name), item))
        else:
            out.append((bind.source, rel))
    return out


def pack(items: list[tuple[str, str]]) -> bytes:
    """A tar of `items` (symlinks stay symlinks; owners are not recorded)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in items:
            info = tar.gettarinfo(path, arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            elif info.isdir() or info.issym():
                tar.addfile(info)
    return buf.getvalue()


# A shell function for the host, run right after the work tree is checked out (sync.checkout's
# `then`, same round trip; $H is the login directory, $Wabs the work tree, the tar on stdin):
#   receive_state STATE_HOME tar|none [KEYED_DIR CANONICAL_KEY]... -- [CREDENTIAL_FILE]...
# It sets $AH to the state home's absolute path.
RECEIVE = r"""
receive_state() {
  S=$1; shift
  mkdir -p "$S"; cd "$S"
  if [ "$1" = tar ]; then tar -x --no-same-owner --keep-newer-files --warning=no-ignore-newer -f -; fi
  shift
  key=$(printf %s "$Wabs" | LC_ALL=C sed 's/[^A-Za-z0-9]/-/g')
  while [ "$1" != -- ]; do  # this session's key becomes a link to the project's own entry
    mkdir -p -- "$1/$2"
    if [ "$2" != "$key" ] && ! { [ -d "$1/$key" ] && ! [ -L "$1/$key" ]; }; then rm -f -- "$1/$key"; ln -s -- "$2" "$1/$key"; fi
    shift 2
  done
  shift
  for c in "$@"; do  # the host's own credential files, linked in unless the state holds its own
    if [ -e "$H/$c" ] && ! { [ -f "$c" ] && ! [ -L "$c" ]; }; then mkdir -p -- "$(dirname -- "$c")"; rm -f -- "$c"; ln -s -- "$H/$c" "$c"; fi
  done
  AH=$(pwd -P); cd "$H"
}
"""


def receive_args(state_home: str, has_tar: bool, canonical: str, keyed_dirs: list[str], credentials: list[str]) -> list[str]:
    """The arguments of `receive_state` for this session."""
    args = [state_home, "tar" if has_tar else "none"]
    for directory in keyed_dirs:
        args += [directory, canonical]
    return [*args, "--", *credentials]


def remote_state_home(workdir: str, project_key: str, profile: str) -> str:
    """The project's agent state home on the host (relative to the login directory unless absolute)."""
    return f"{workdir}/state/{project_key}/{profile}/home"


