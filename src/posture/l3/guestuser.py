"""Run the L3 guest's exec agent (and so every command) as the user's uid and gid, not guest root.

The guest's init runs as root (it mounts the shares), then switch_root executes a small
dropper: it drops supplementary groups, sets the gid and uid of the user (as the view has
them) and executes the agent. The native dropper is a few lines of C built statically
with the compiler that builds the native agent; with the Python agent the drop is a line
of Python in front of it (the interpreter starts once either way).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import replace
from pathlib import Path

from ..errors import Unavailable
from .guestagent import COMPILER_FIX, GuestAgent, compiler

DROP_C = r"""
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
/* dropuid UID GID PROGRAM ARGS...: become UID:GID with no supplementary groups, then exec. */
int main(int argc, char **argv) {
    if (argc < 4) { fputs("dropuid: UID GID PROGRAM...\n", stderr); return 64; }
    uid_t uid = (uid_t)strtoul(argv[1], 0, 10);
    gid_t gid = (gid_t)strtoul(argv[2], 0, 10);
    if (setgroups(0, 0) || setresgid(gid, gid, gid) || setresuid(uid, uid, uid)) { perror("dropuid"); return 70; }
    if (getuid() != uid || geteuid() != uid) { fputs("dropuid: still privileged\n", stderr); return 70; }
    execv(argv[3], argv + 3);
    perror("dropuid: exec");
    return 127;
}
"""

DROP_PY = ("import os,sys;u,g=int(sys.argv[1]),int(sys.argv[2]);os.setgroups([]);os.setresgid(g,g,g);os.setresuid(u,u,u);"
           "sys.argv=sys.argv[3:];sys.path.insert(0,os.path.dirname(sys.argv[0]));"
           "import runpy;runpy.run_path(sys.argv[0],run_name='__main__')")


def build_dropper(cache: Path) -> Path:
    """The static dropper, built once into `cache`."""
    cc = compiler()
    if cc is None:
        raise Unavailable("no C compiler to build the L3 guest's uid dropper", fix=COMPILER_FIX)
    digest = hashlib.sha256(DROP_C.encode() + os.path.realpath(cc).encode()).hexdigest()[:16]
    out = cache / f"dropuid-{digest}"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / f".dropuid-{os.getpid()}.c"
    tmp = cache / f".dropuid-{os.getpid()}"
    src.write_text(DROP_C)
    try:
        proc = subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(tmp), str(src)], capture_output=True, text=True)
    finally:
        src.unlink(missing_ok=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise Unavailable(f"{cc} could not build the L3 guest's uid dropper: {(proc.stderr.strip().splitlines() or ['?'])[-1][-200:]}", fix=COMPILER_FIX)
    tmp.chmod(0o755)
    os.replace(tmp, out)
    return out


def as_user(agent: GuestAgent, uid: int, gid: int, cache: Path, guest_dir: str) -> GuestAgent:
    """`agent`, started through a dropper so it runs as `uid`:`gid` in the guest."""
    if agent.kind == "native":
        binary = build_dropper(cache)
        files = dict(agent.files)
        files["dropuid"] = (binary, 0o755)
        return replace(agent, files=files, argv=[f"{guest_dir}/dropuid", str(uid), str(gid), *agent.argv],
                       why=agent.why + f"; commands run as uid {uid}", uid=uid)
    python, *rest = agent.argv
    flags = [a for a in rest if a.startswith("-") and len(a) == 2]
    script = [a for a in rest if a not in flags]
    return replace(agent, argv=[python, *flags, "-c", DROP_PY, str(uid), str(gid), *script],
                   why=agent.why + f"; commands run as uid {uid}", uid=uid)
