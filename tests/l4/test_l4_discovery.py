"""Peer discovery through the (stand-in) tailscale CLI: matching, and every refusal exits 69 with a fix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from posture.errors import Unavailable
from posture.l4 import tailscale

from l4.vps import STANDIN_BIN


pytestmark = pytest.mark.l4


def standin_status(tmp_path: Path, scenario: dict) -> dict:
    state = tmp_path / "ts.json"
    state.write_text(json.dumps(scenario))
    proc = subprocess.run([str(STANDIN_BIN / "tailscale"), "status", "--json"], capture_output=True, text=True,
                          env={"POSTURE_TEST_TAILSCALE_STATE": str(state), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


PEERS = [
    {"HostName": "vps", "DNSName": "vps.tailnet-xyz.ts.net.", "TailscaleIPs": ["100.64.0.10", "fd7a:115c:a1e0::10"]},
    {"HostName": "vps-2", "DNSName": "vps-2.tailnet-xyz.ts.net.", "TailscaleIPs": ["100.64.0.11"]},
    {"HostName": "Other Name", "DNSName": "box.tailnet-xyz.ts.net.", "TailscaleIPs": ["100.64.0.12"]},
]


def test_standin_prints_the_documented_shape(tmp_path: Path) -> None:
    doc = standin_status(tmp_path, {"BackendState": "Running", "peers": PEERS})
    assert doc["BackendState"] == "Running" and doc["Self"]["DNSName"].endswith(".ts.net.")
    assert all(key.startswith("nodekey:") for key in doc["Peer"])
    peer = next(iter(doc["Peer"].values()))
    for field in ("HostName", "DNSName", "TailscaleIPs", "Online", "Expired"):
        assert field in peer


def test_match_by_ip_then_full_name_then_first_label(tmp_path: Path) -> None:
    doc = standin_status(tmp_path, {"BackendState": "Running", "peers": PEERS})
    assert tailscale.match(doc, "100.64.0.11").label == "vps-2"
    assert tailscale.match(doc, "fd7a:115c:a1e0::10").label == "vps"
    assert tailscale.match(doc, "vps-2.tailnet-xyz.ts.net").label == "vps-2"
    assert tailscale.match(doc, "VPS.tailnet-xyz.ts.net.").label == "vps"
    assert tailscale.match(doc, "box").ip == "100.64.0.12"  # first label of DNSName, not HostName
    assert tailscale.match(doc, "vps").ip == "100.64.0.10"
    assert tailscale.match(doc, "100.64.0.99") is None
    assert tailscale.match(doc, "vps.other-tailnet.ts.net") is None


@pytest.mark.parametrize(
    "scenario, words",
    [
        ({"BackendState": "Stopped", "peers": PEERS}, "not running"),
        ({"BackendState": "NeedsLogin", "peers": PEERS}, "tailscale up"),
        ({"BackendState": "Running", "peers": [{**PEERS[0], "Online": False}]}, "offline"),
        ({"BackendState": "Running", "peers": [{**PEERS[0], "Expired": True}]}, "expired"),
        ({"BackendState": "Running", "peers": PEERS[1:]}, "not a peer"),
    ],
)
def test_find_peer_refusals(tmp_path: Path, scenario: dict, words: str) -> None:
    doc = standin_status(tmp_path, scenario)
    with pytest.raises(Unavailable) as err:
        tailscale.find_peer("vps", doc)
    assert err.value.exit_code == 69 and words in err.value.line() and err.value.fix


@pytest.mark.parametrize(
    "change, words",
    [
        ({"Online": False}, "is offline"),
        ({"Expired": True}, "expired node key"),
        ({"BackendState": "Stopped"}, "tailscale is not running"),
        ({"daemon": False}, "tailscale status --json` failed"),
    ],
)
def test_cli_refuses_unusable_peer_with_69(l4, make_repo, change: dict, words: str) -> None:
    l4.enroll()
    repo = make_repo()
    l4.scenario(**change)
    proc = l4.posture("exec", "--level", "l4", "--", "true", cwd=repo)
    assert proc.returncode == 69, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "fix:" in lines[0], proc.stderr
    # and the control: the same command works once the peer is usable again
    l4.scenario()
    ok = l4.posture("exec", "--level", "l4", "--", "true", cwd=repo)
    assert ok.returncode == 0, ok.stderr


def test_missing_tailscale_cli_is_69(l4, make_repo) -> None:
    l4.enroll()
    proc = l4.posture("exec", "--level", "l4", "--", "true", cwd=make_repo(), env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 69 and "tailscale CLI is not on PATH" in proc.stderr, proc.stderr
