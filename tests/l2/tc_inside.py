"""Runs INSIDE a session: the user's toolchains from their PATH. Standard library only.

    python3 tc_inside.py '<json: tools, trees, creds, canary>'
Prints one line `TC-RESULT:<json>`: each tool's path and output, a write attempt into each
tree, each credential's fate, the PATH, and a scan of the whole visible filesystem for the canary.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys


def find_canary(canary: str) -> list[str]:
    """Every visible path whose name or content holds `canary` (/usr: names only, as the probe;
    tops that are links into /usr, such as /lib, are walked at their real place)."""
    hits, needle = [], canary.encode()
    for top in os.listdir("/"):
        base = "/" + top
        if top in ("proc", "sys", "dev") or os.path.islink(base):
            continue
        for dirpath, dirs, files in os.walk(base, onerror=lambda e: None):
            hits += [os.path.join(dirpath, n) for n in files + dirs if canary in n]
            if top == "usr":
                continue
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.islink(path) or os.path.getsize(path) > 4 << 20:
                        continue
                    with open(path, "rb") as fh:
                        if needle in fh.read():
                            hits.append(path)
                except OSError:
                    continue
    return hits


def outcome(fn) -> str:
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__


def read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return "read:" + fh.read().decode(errors="replace")
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    r: dict[str, object] = {"path": os.environ.get("PATH", "")}
    tools = {}
    for name in cfg["tools"]:
        where = shutil.which(name)
        proc = subprocess.run([name], capture_output=True, text=True) if where else None
        tools[name] = {"which": where, "out": proc.stdout.strip() if proc else "", "rc": proc.returncode if proc else None,
                       "err": proc.stderr.strip()[-300:] if proc else ""}
    r["tools"] = tools
    writes = {}
    for layout, tree in cfg["trees"].items():
        def new_file(tree: str = tree) -> None:
            with open(os.path.join(tree if os.path.isdir(tree) else os.path.dirname(tree), "posture-was-here"), "w") as fh:
                fh.write("x")
        writes[layout] = {"new": outcome(new_file), "exists": os.path.exists(tree)}
    for name, t in tools.items():
        if t["which"]:
            real = os.path.realpath(t["which"])
            writes[f"tool:{name}"] = {"append": outcome(lambda real=real: open(real, "a").write("echo pwned\n")),
                                      "chmod": outcome(lambda real=real: os.chmod(real, 0o777))}
    r["writes"] = writes
    r["creds"] = {p: read(p) for p in cfg["creds"]}
    r["canary_hits"] = find_canary(cfg["canary"]) if cfg.get("scan", True) else []
    print("TC-RESULT:" + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
