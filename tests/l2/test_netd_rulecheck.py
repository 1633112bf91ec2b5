"""The helper's remembered rule check, against the real kernel's ruleset generation.

The helper lists its table once and then trusts the ruleset generation: a change it made
itself (one transaction) may carry the check forward, anything else voids it. These checks
run in a network namespace of their own (`unshare --net`), with real nft commits, and put
another party's commit in the middle of the helper's own change: the case in which a
removal that found nothing to remove passed a deleted table off as the helper's own change.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.l2]

CHILD = textwrap.dedent("""
    import sys
    from posture.netd import nft
    from posture.netd.rulecheck import RememberedCheck

    T, CG = "ptcheck", sys.argv[1]
    CID = 4242

    def load():
        nft.run(f"add table inet {T}\\ndelete table inet {T}\\nadd table inet {T}\\nadd chain inet {T} sessions\\n"
                f"add rule inet {T} sessions ip daddr 10.8.0.0/16 reject comment \\"base\\"\\n")

    def outside(cmd):  # another party's commit, by the nft binary
        import subprocess
        subprocess.run(["nft", cmd], check=True)

    def fresh():
        load()
        check = RememberedCheck(nft.generation)
        check.remember(nft.generation(), CID)
        assert check.holds(CID)[0], "a check remembered just now must hold"
        return check

    def after_outside_commit(cmd, change):  # another party commits inside the helper's own change
        check = fresh()
        def both():
            outside(cmd)
            return change()
        check.own_change(both)
        return check.holds(CID)[0]

    results = {}
    # the helper's own removal finds the table gone (deleted mid-change) or its rules gone (flushed):
    # it committed nothing, so the other party's commit must void the check
    remove = lambda: nft.remove_session_rules(T, ["u1-x"])
    results["removal_after_delete"] = after_outside_commit(f"delete table inet {T}", remove)
    results["removal_after_flush"] = after_outside_commit(f"flush table inet {T}", remove)
    # the helper's own commit plus another one: two steps, voided
    add = lambda: nft.add_session_rules(T, CG, 1, ["10.9.0.0/16"], "u1-y")
    results["add_plus_outside"] = after_outside_commit(f"add chain inet {T} other", add)

    # controls: the helper's own add and removal alone carry the check forward
    check = fresh()
    check.own_change(lambda: nft.add_session_rules(T, CG, 1, ["10.9.0.0/16"], "u1-z"))
    results["own_add"] = check.holds(CID)[0]
    check.own_change(lambda: nft.remove_session_rules(T, ["u1-z"]))
    results["own_removal"] = check.holds(CID)[0]
    # ... and a removal with nothing to remove, with nobody else committing, keeps it too
    check.own_change(lambda: nft.remove_session_rules(T, ["u1-none"]))
    results["own_noop"] = check.holds(CID)[0]
    # ... but no longer once anyone commits afterwards
    outside(f"add chain inet {T} late")
    results["after_outside"] = check.holds(CID)[0]
    import json
    print(json.dumps(results))
""")


def test_the_remembered_check_survives_only_the_helpers_own_commits() -> None:
    cgroup = Path(f"/sys/fs/cgroup/ptcheck-{uuid.uuid4().hex[:6]}")
    cgroup.mkdir()
    try:
        proc = subprocess.run(["unshare", "--net", sys.executable, "-c", CHILD, cgroup.name],
                              capture_output=True, text=True, timeout=60)
    finally:
        cgroup.rmdir()
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == {
        "removal_after_delete": False, "removal_after_flush": False, "add_plus_outside": False,
        "own_add": True, "own_removal": True, "own_noop": True, "after_outside": False,
    }, results
