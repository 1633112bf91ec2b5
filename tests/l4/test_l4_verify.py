"""`posture verify --level l4` against the stand-in VPS: the probe runs on the host; nothing planted
reaches it, the public host answers from it, and a tailnet peer that answers from it is a warning."""

from __future__ import annotations

import json

import pytest

from posture.verify.promises import AGENT, LEVEL_PROMISES, PEERS
from testnet import LAN_HOSTS, PORT, PUBLIC

pytestmark = pytest.mark.l4


def test_verify_l4_warns_about_a_peer_that_answers(l4, make_repo) -> None:
    l4.enroll()
    doc = l4.vps.tailscale_scenario()
    # another online machine of the tailnet that the VPS can reach (a test host listening on 8080)
    doc["peers"].append({"HostName": "nas", "DNSName": "nas.tailnet-xyz.ts.net.", "TailscaleIPs": [LAN_HOSTS[0]], "Online": True})
    l4.scenario_file.write_text(json.dumps(doc))
    repo = make_repo()
    targets = json.dumps({"public": [f"{PUBLIC}:{PORT}"]})
    r = l4.posture("verify", "--level", "l4", "--json", cwd=repo, env={"POSTURE_VERIFY_TARGETS": targets})
    assert r.returncode == 0, r.stdout + r.stderr
    by = {row["promise"]: row for row in json.loads(r.stdout)}
    assert list(by) == list(LEVEL_PROMISES["l4"])
    for name in LEVEL_PROMISES["l4"]:
        if name == AGENT and by[name]["held"] is None:
            assert "names no API credential" in by[name]["evidence"], by[name]  # this user's profile is `shell`
        elif name != PEERS:
            assert by[name]["held"] is True, by[name]
    peers = by[PEERS]
    assert peers["held"] is None and peers["evidence"].startswith("WARNING") and f"{LAN_HOSTS[0]}:{PORT}" in peers["evidence"], peers
    assert "100.64.0.10" not in peers["evidence"]  # the L4 host itself is not a peer to warn about
    assert f"warning: l4 {PEERS}" in r.stderr
    # nothing of it stays on the VPS or here
    assert not list((l4.home / ".ssh").glob("posture-verify-*"))
