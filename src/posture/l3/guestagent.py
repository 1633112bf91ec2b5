"""Which exec agent the L3 guest runs after switch_root, and how it is built.

Two implementations of one wire protocol (guest/wire.py): the native agent (guest/agent.c,
compiled statically with the host's C compiler, cached) starts at once in an emulated
guest; the Python agent (guest/agent.py under the view's python3) needs no compiler but
costs about two seconds of TCG time before the first command. `[l3] agent` picks one:
"auto" (native when it can be built, else python), "native" or "python".
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Unavailable

AGENT_C = Path(__file__).resolve().parent.parent / "guest" / "agent.c"
INIT_C = AGENT_C.with_name("init.c")
CHOICES = ("auto", "native", "python")
COMPILER_FIX = "apt-get install gcc libc6-dev (or set [l3] agent = \"python\" and accept a slower first command)"


@dataclass
class GuestAgent:
    """The agent a session's guest runs: files for the root share's guest dir and the command line."""

    kind: str  # "native" or "python"
    files: dict[str, tuple[Path, int]] = field(default_factory=dict)  # name in the guest dir -> (source, mode)
    argv: list[str] = field(default_factory=list)  # run by switch_root; `--device DEV` is appended
    why: str = ""
    uid: int | None = None  # set when a dropper runs it as this uid (l3/guestuser.py); None: guest root


def compiler() -> str | None:
    """The C compiler posture builds the native agent with (CC, else cc or gcc on PATH)."""
    wanted = os.environ.get("CC")
    if wanted:
        return shutil.which(wanted)
    return shutil.which("cc") or shutil.which("gcc")


def build_native(cache: Path) -> Path:
    """The static native agent for this agent.c and compiler, built once into `cache`."""
    return build_static(cache, AGENT_C, "agent-native", "native exec agent")


def build_init(cache: Path) -> Path:
    """The static native init (guest/init.c) for this compiler, built once into `cache`."""
    return build_static(cache, INIT_C, "init-native", "native init")


def build_static(cache: Path, source: Path, prefix: str, what: str) -> Path:
    """`source` compiled statically with the host's compiler into `cache` (named by a digest of both), once."""
    cc = compiler()
    if cc is None:
        raise Unavailable(f"no C compiler to build the L3 guest's {what}", fix=COMPILER_FIX)
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    digest = hashlib.sha256(source.read_bytes() + repr((os.path.realpath(cc), version)).encode()).hexdigest()[:16]
    out = cache / f"{prefix}-{digest}"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{prefix}-{os.getpid()}"
    proc = subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(tmp), str(source)], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1][-200:]
        raise Unavailable(f"{cc} could not build the L3 guest's {what}: {detail}", fix=COMPILER_FIX)
    tmp.chmod(0o755)
    os.replace(tmp, out)
    return out


def choose(wanted: str, cache: Path, guest_dir: str, python: str, pycs: Callable[[Path], dict[str, Path]]) -> GuestAgent:
    """The agent for `[l3] agent = wanted`; `pycs(cache)` compiles the Python agent when needed."""
    if wanted not in CHOICES:
        raise Unavailable(f"[l3] agent = {wanted!r} is not known", fix=f"use one of {', '.join(CHOICES)}")
    if wanted in ("auto", "native"):
        try:
            binary = build_native(cache)
            return GuestAgent("native", {"agent": (binary, 0o755)}, [f"{guest_dir}/agent"], why=f"native ({binary}, built from guest/agent.c)")
        except Unavailable as exc:
            if wanted == "native":
                raise
            why = f"python (the native agent cannot be built: {exc.message}; the first command waits about 2 s longer)"
    else:
        why = 'python ([l3] agent = "python")'
    files = {name: (path, 0o644) for name, path in pycs(cache).items()}
    return GuestAgent("python", files, [python, "-I", "-S", f"{guest_dir}/agent.pyc"], why=why)
