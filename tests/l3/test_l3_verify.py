"""`posture verify --level l3`: one VM, the shipped probe inside as guest root, every L3 promise held."""

from __future__ import annotations

import json

import pytest
from l3env import GW_LOOPBACK_PORT, L3

from posture.verify.promises import AGENT, LEVEL_PROMISES
from testnet import INTERNAL, PORT, PUBLIC

pytestmark = [pytest.mark.root, pytest.mark.l3]


def test_verify_l3_holds(l3: L3) -> None:
    project = l3.make_project("verify")
    targets = json.dumps({
        "public": [f"{PUBLIC}:{PORT}"],
        "internal": [f"{a}:{PORT}" for a in INTERNAL],
        "loopback": [f"10.0.2.2:{GW_LOOPBACK_PORT}", f"127.0.0.1:{GW_LOOPBACK_PORT}"],
    })
    r = l3.posture("verify", str(project), "--level", "l3", "--json", cwd=project, timeout=600, POSTURE_VERIFY_TARGETS=targets)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)
    assert [row["promise"] for row in rows] == list(LEVEL_PROMISES["l3"])
    for row in rows:
        if row["promise"] == AGENT and row["held"] is None:
            assert "names no API credential" in row["evidence"], row  # this user's profile is `shell`
            continue
        assert row["level"] == "l3" and row["held"] is True, row
    assert not list((l3.home / ".ssh").glob("posture-verify-*")) and not list(project.glob(".posture-verify-*"))
    assert l3.domains() == []
