"""The user's toolchains inside the L3 guest: the same view, over virtio-fs.

Home layouts (a native installer's versions dir, an npm user prefix, an nvm prefix whose
etc/npmrc holds a credential) and the fake Nix store with its profile chain
(tests/l2/layouts.py) are built for the session's user; from inside the guest each tool runs
at its PATH entry, its tree is read-only even for guest root, and no credential placed beside a
tool is readable or found by a scan of the guest's whole filesystem.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import layouts
import pytest
from l3env import L3

pytestmark = [pytest.mark.root, pytest.mark.l3]

L2_TESTS = Path(__file__).resolve().parent.parent / "l2"


def test_home_and_nix_toolchains_run_read_only_in_the_guest(l3: L3) -> None:
    lay = layouts.build(l3.home, l3.user, l3.canary, uuid.uuid4().hex[:8], only=("native", "npm", "nvm", "nix"))
    try:
        project = l3.make_project("toolchains")
        shutil.copy(L2_TESTS / "tc_inside.py", project / "tc_inside.py")
        cfg = {"tools": sorted(lay.tools), "trees": lay.trees, "creds": sorted(lay.creds), "canary": l3.canary}
        proc = l3.posture("exec", str(project), "--level", "l3", "--profile", "shell", "--", "python3", "tc_inside.py", json.dumps(cfg),
                          cwd=project, PATH=lay.path_value(), timeout=600)
        assert proc.returncode == 0, proc.stderr
        line = next(x for x in proc.stdout.splitlines() if x.startswith("TC-RESULT:"))
        r = json.loads(line.split(":", 1)[1])
        assert r["path"].split(":") == lay.path
        for name in ("nativetool", "npmtool", "nvmnode", "nixtool", "nixsystool", "nixusertool"):
            assert r["tools"][name]["out"] == lay.tools[name], (name, r["tools"][name])
        for what, w in r["writes"].items():
            for op in ("new", "append", "chmod"):
                if op in w:
                    # read-only on the host side (EROFS); a system tree's root-owned file refuses the user first (EACCES)
                    assert w[op] in ("EROFS", "EACCES"), (what, op, w)
        for layout in lay.trees:
            assert r["writes"][layout]["exists"], layout
        for path, fate in r["creds"].items():
            assert l3.canary not in fate and fate in ("ENOENT", "read:"), (path, fate)
        assert r["canary_hits"] == [], r["canary_hits"]
    finally:
        lay.remove()
