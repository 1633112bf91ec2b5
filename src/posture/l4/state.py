"""Carry the per-project agent state to the L4 host, so the agent continues its conversation.

What travels: the view's state binds (entries of `view.binds` whose source is under
`view.state_dir`, e.g. ~/.claude and ~/.claude.json of the project's state home), as a tar
stream over the pinned connection. What never travels: the profile's credential files (the
agent's own credentials on the host are the host's business), wherever they sit in the state.

Where it lands: one state home per project and profile on the host,
`<workdir>/state/<project key>/<profile>/home`, kept between sessions (a later L4 session of the
project continues too; files newer on the host than the ones sent are kept). The agent runs with
HOME set to it, like L2's per-project state home. The host needs no agent credential of its own:
the profile's credential files there are the session's sentinels (posture.gateway), sent with the
state, and the agent's API calls come back to the session's gateway over posture's own SSH
connection (door.py). Nothing of the login user's own home is linked in.

Keyed history: for each `state.project_keyed` directory of the profile (Claude Code's
~/.claude/projects), entries are named after the agent's working directory. The local project's
entry is the project's one on the host, and the session's work tree key (its own path on the host,
different every session) is a symlink to it.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def path_key(path: str) -> str:
    """The key an agent files a working directory's history under: non-alphanumerics become '-'."""
    return re.sub(r"[^A-Za-z0-9]", "-", path)


def _credential(rel: str, credentials: list[str]) -> bool:
    return any(rel == c or rel.startswith(c.rstrip("/") + "/") for c in credentials)


def carried(view: Any, credentials: list[str]) -> list[tuple[str, str]]:
    """(local path, home-relative name) of every state file to send; credential files left out."""
    if view is None or not view.state_dir:
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
#   receive_state STATE_HOME tar|none EXPECTED_ID NEW_ID [CREDENTIAL_FILE]... -- [KEYED_DIR CANONICAL_KEY]...
# CREDENTIAL_FILE: the profile's credential files, removed before unpacking (an old sentinel, or a
# link an older posture made to the host's own): the tar brings this session's sentinels.
# It sets $AH to the state home's absolute path, or to "" when the state home is not the one
# posture last sent to (EXPECTED_ID does not match: wiped, or never sent): then nothing is
# unpacked and the caller sends everything again.
RECEIVE = r"""
receive_state() {
  S=$1; mode=$2; expect=$3; new=$4; shift 4
  mkdir -p "$S"; cd "$S"
  if [ -n "$expect" ] && [ "$(cat .posture-state-id 2>/dev/null || true)" != "$expect" ]; then
    cat >/dev/null; AH=; cd "$H"; return 0
  fi
  while [ "$1" != -- ]; do rm -f -- "$1"; shift; done
  shift
  if [ "$mode" = tar ]; then tar -x --no-same-owner --keep-newer-files --warning=no-ignore-newer -f -; fi
  if [ -n "$new" ]; then printf '%s\n' "$new" > .posture-state-id; fi
  key=$(printf %s "$Wabs" | LC_ALL=C sed 's/[^A-Za-z0-9]/-/g')
  while [ $# -ge 2 ]; do  # this session's key becomes a link to the project's own entry
    mkdir -p -- "$1/$2"
    if [ "$2" != "$key" ] && ! { [ -d "$1/$key" ] && ! [ -L "$1/$key" ]; }; then rm -f -- "$1/$key"; ln -s -- "$2" "$1/$key"; fi
    shift 2
  done
  AH=$(pwd -P); cd "$H"
}
"""

MANIFEST = "l4-sent.json"  # in the project's local state dir (outside the agent's view): what each host has


@dataclass
class Send:
    """What one start sends of the agent's state, and the manifest to record once it landed."""

    items: list[tuple[str, str]]
    expect: str  # the id the host's state home must carry for a partial send ("" = full send)
    new_id: str  # the id a full send gives the host's state home
    files: dict[str, list[int]]  # home-relative name -> [mtime_ns, size] of everything carried

    def tar(self) -> bytes:
        """The tar stream of `items` (empty when there is nothing to send)."""
        return pack(self.items) if self.items else b""


def _manifest(view: Any) -> dict[str, Any]:
    try:
        return json.loads((Path(view.state_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def plan_send(view: Any, credentials: list[str], host_key: str, full: bool = False) -> Send:
    """Only what changed since the last send to `host_key` (by mtime and size), or everything
    (first send, `full`, or no manifest)."""
    items = carried(view, credentials)
    files = {}
    for path, rel in items:
        st = os.lstat(path)
        files[rel] = [st.st_mtime_ns, st.st_size]
    entry = {} if full else _manifest(view).get(host_key) or {}
    if entry.get("id"):
        sent = entry.get("files") or {}
        changed = [(p, r) for p, r in items if not os.path.isdir(p) and sent.get(r) != files[r]]
        return Send(changed, entry["id"], "", files)
    return Send(items, "", secrets.token_hex(16), files)


def record_sent(view: Any, host_key: str, send: Send) -> None:
    """Remember what the host's state home now holds (after it acknowledged the send)."""
    path = Path(view.state_dir) / MANIFEST
    doc = _manifest(view)
    doc[host_key] = {"id": send.expect or send.new_id, "files": send.files}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def add_sentinels(send: Send, brokered: Any) -> None:
    """Send the session's sentinel credential files (posture.gateway) with the state, every time."""
    if brokered is None:
        return
    for rel, path in sorted(getattr(brokered, "paths", {}).items()):
        send.items.append((path, rel))


def receive_args(state_home: str, send: Send, canonical: str, keyed_dirs: list[str], credentials: list[str]) -> list[str]:
    """The arguments of `receive_state` for this session."""
    args = [state_home, "tar" if send.items else "none", send.expect, send.new_id, *credentials, "--"]
    for directory in keyed_dirs:
        args += [directory, canonical]
    return args


def remote_state_home(workdir: str, project_key: str, profile: str) -> str:
    """The project's agent state home on the host (relative to the login directory unless absolute)."""
    return f"{workdir}/state/{project_key}/{profile}/home"


