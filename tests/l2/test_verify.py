"""`posture verify --level l2`: passes on a healthy setup, names what broke when a promise does not hold,
and fails (naming the network promise) when the helper's nftables table is deleted behind its back.

posture runs as the ordinary user in the root network namespace, which holds none of the test
hosts (they live in the test's namespaces, where the helper and slirp4netns run): the network
targets come from POSTURE_VERIFY_TARGETS. The automatic choice is tried where it can see them:
in the helper's namespace (and on made-up host facts in tests/core/test_verify_targets.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from l2env import L2, start_netd, stop_netd

from posture.verify.promises import INTERNAL as INTERNAL_ROW
from posture.verify.promises import LEVEL_PROMISES, LOOPBACK
from posture.verify.promises import PUBLIC as PUBLIC_ROW
from testnet import INTERNAL, INTERNAL6, PORT, PUBLIC, PUBLIC6, in_ns

pytestmark = [pytest.mark.root, pytest.mark.l2]


def _targets(l2: L2) -> str:
    port = l2.gw_loopback_port
    return json.dumps({
        "public": [f"{PUBLIC}:{PORT}", f"[{PUBLIC6}]:{PORT}"],
        "internal": [f"{a}:{PORT}" for a in INTERNAL] + [f"[{a}]:{PORT}" for a in INTERNAL6],
        "loopback": [f"10.0.2.2:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"],
    })


def _verify(l2: L2, project: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return l2.posture("verify", str(project), "--level", "l2", "--json", *extra, cwd=project, timeout=300,
                      POSTURE_VERIFY_TARGETS=_targets(l2), **env)


def _left_behind(l2: L2, project: Path) -> list[str]:
    found = [str(p) for p in (l2.home / ".ssh").glob("posture-verify-*")]
    found += [str(p) for p in (l2.home / ".local" / "state" / "posture" / "projects").glob("posture-verify-*")]
    found += [str(p) for p in project.rglob(".posture-verify-*")]
    status = subprocess.run(["git", "-c", "safe.directory=*", "status", "--porcelain", "--ignored"], cwd=project, capture_output=True, text=True).stdout
    return found + [line for line in status.splitlines() if line.strip()]


def test_verify_passes_on_a_healthy_setup(l2: L2) -> None:
    project = l2.make_project("verify-ok")
    config_before = (project / ".git" / "config").read_text()
    r = _verify(l2, project)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)
    assert all(set(row) == {"level", "promise", "held", "evidence"} and row["level"] == "l2" for row in rows), rows
    by = {row["promise"]: row for row in rows}
    assert list(by) == list(LEVEL_PROMISES["l2"])
    for row in rows:
        assert row["held"] is True, row  # everything is testable here, the network included
    assert f"{PUBLIC}:{PORT}" in by[PUBLIC_ROW]["evidence"] and "POSTURE_VERIFY_TARGETS" in by[PUBLIC_ROW]["evidence"]
    assert "100.64.0.10:8080" in by[INTERNAL_ROW]["evidence"] and f"10.0.2.2:{l2.gw_loopback_port}" in by[LOOPBACK]["evidence"]
    assert "every promise tried held at l2" in r.stderr
    # it cleaned up after itself: no canary, no marker, the project untouched, no session left
    assert _left_behind(l2, project) == []
    assert (project / ".git" / "config").read_text() == config_before
    assert l2.settled()
    # the text form: one row per promise
    r = l2.posture("verify", str(project), "--level", "l2", cwd=project, timeout=300, POSTURE_VERIFY_TARGETS=_targets(l2))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(LEVEL_PROMISES["l2"]) and all(line.startswith("l2  ") and "  held  " in line for line in lines), r.stdout


def test_verify_names_a_promise_the_config_breaks(l2: L2) -> None:
    """A user config that passes the planted secret and mounts ~/.ssh: both rows say so, exit 1."""
    project = l2.make_project("verify-broken")
    cfg = l2.home / ".config" / "posture" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'[env]\npass = ["POSTURE_VERIFY_SECRET_TOKEN"]\n\n[mounts]\nro = ["{l2.home / ".ssh"}"]\n')
    subprocess.run(["chown", "-R", f"{l2.uid}:{l2.gid}", str(l2.home / ".config")], check=True)
    try:
        r = _verify(l2, project)
    finally:
        cfg.unlink()
    assert r.returncode == 1, r.stdout + r.stderr
    by = {row["promise"]: row for row in json.loads(r.stdout)}
    assert by["no secret in the environment"]["held"] is False and "env:POSTURE_VERIFY_SECRET_TOKEN" in by["no secret in the environment"]["evidence"]
    assert by["credential files absent"]["held"] is False and ".ssh/id_ed25519" in by["credential files absent"]["evidence"]
    assert by[INTERNAL_ROW]["held"] is True and by[PUBLIC_ROW]["held"] is True  # the rest still holds
    assert "NOT HELD at l2: no secret in the environment" in r.stderr and "NOT HELD at l2: credential files absent" in r.stderr
    assert _left_behind(l2, project) == []


def test_verify_fails_naming_the_network_when_the_table_is_deleted(l2: L2) -> None:
    project = l2.make_project("verify-unloaded")
    ok = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "true")
    assert ok.returncode == 0, ok.stderr  # a passed check for the helper to remember first
    in_ns(l2.net.gw, "nft", "delete", "table", "inet", l2.table)
    try:
        r = _verify(l2, project)
    finally:
        stop_netd(l2.netd_proc)
        l2.netd_proc = start_netd(l2.net, l2.sock, l2.base, l2.table)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    by = {row["promise"]: row for row in json.loads(r.stdout)}
    for name in (INTERNAL_ROW, LOOPBACK):
        assert by[name]["held"] is False, by[name]
        assert "not in force" in by[name]["evidence"] and "fail closed" in by[name]["evidence"], by[name]
    assert by["credential files absent"]["held"] is None  # nothing else could be tried
    assert f"NOT HELD at l2: {INTERNAL_ROW}" in r.stderr
    assert _left_behind(l2, project) == [] and l2.box_cgroups() == []
    # with the helper restarted, verify passes again
    r = _verify(l2, project)
    assert r.returncode == 0, r.stdout + r.stderr


def test_automatic_targets_in_the_helpers_namespace(l2: L2) -> None:
    """Where the test hosts are visible (GW: default route via the public host, a listener on its loopback),
    the automatic choice finds the public host on the gateway and the loopback listener, and says
    that no internal address answers there."""
    code = ("import json; from posture.netpolicy import NetworkPolicy; from posture.verify import targets as t; "
            "c = t.confirm(t.choose(t.read_host(), NetworkPolicy())); "
            "print(json.dumps({k: [x.key for x in c.of(k)] for k in t.KINDS} | {'notes': c.notes}))")
    r = in_ns(l2.net.gw, sys.executable, "-c", code)
    got = json.loads(r.stdout)
    assert f"{PUBLIC}:{PORT}" in got["public"], got
    assert f"10.0.2.2:{l2.gw_loopback_port}" in got["loopback"] and f"127.0.0.1:{l2.gw_loopback_port}" in got["loopback"], got
    assert got["internal"] == [] and "answered from the host" in got["notes"]["internal"], got


def test_all_runs_what_can_run_and_a_requested_level_that_cannot_is_69(l2: L2) -> None:
    """`--level all` (the default): L2 runs, L3 and L4 (not configured to run here) are one `session` row each;
    `--level l2` without the helper: exit 69, one row saying why and how to fix it."""
    project = l2.make_project("verify-all")
    cfg = l2.home / ".config" / "posture" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'[l3]\nuri = "qemu+unix:///system?socket={l2.home}/no-libvirt.sock"\n')
    subprocess.run(["chown", "-R", f"{l2.uid}:{l2.gid}", str(l2.home / ".config")], check=True)
    try:
        r = l2.posture("verify", str(project), "--json", cwd=project, timeout=300, POSTURE_VERIFY_TARGETS=_targets(l2))
    finally:
        cfg.unlink()
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)
    assert [row["held"] for row in rows if row["level"] == "l2"] == [True] * len(LEVEL_PROMISES["l2"]), rows
    others = [row for row in rows if row["level"] != "l2"]
    assert [(row["level"], row["promise"], row["held"]) for row in others] == [("l3", "session", None), ("l4", "session", None)], others
    assert all(row["evidence"].startswith("not run: ") and "fix:" in row["evidence"] for row in others), others
    assert "l3, l4 not run here" in r.stderr

    r = _verify(l2, project, POSTURE_NETD_SOCKET=str(l2.home / "no-such.sock"))
    assert r.returncode == 69, r.stdout + r.stderr
    [row] = json.loads(r.stdout)
    assert row["promise"] == "session" and row["held"] is None and "posture setup" in row["evidence"], row
    assert "could not run l2" in r.stderr
    assert _left_behind(l2, project) == []
