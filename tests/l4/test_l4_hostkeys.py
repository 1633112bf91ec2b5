"""Host key pinning: enroll from the tailnet's sshHostKeys or a confirmed fingerprint; anything else is refused."""

from __future__ import annotations

import pytest

import json

from posture.l4.hostkeys import HostKey


pytestmark = pytest.mark.l4


def pins(l4) -> str:
    path = l4.state / "l4" / "known_hosts"
    return path.read_text() if path.exists() else ""


def test_enroll_pins_the_key_the_tailnet_vouches_for(l4, make_repo) -> None:
    proc = l4.posture("l4", "enroll")
    assert proc.returncode == 0, proc.stderr
    line = pins(l4).strip()
    assert line == f"[{l4.vps.ip}]:{l4.vps.port} {' '.join(l4.vps.host_key_line.split()[:2])}"
    assert HostKey.parse(l4.vps.host_key_line).fingerprint() in proc.stderr
    assert "SSH login as posture-vps works" in proc.stderr
    # it is posture's own file, private, and nothing went to ~/.ssh
    assert (l4.state / "l4" / "known_hosts").stat().st_mode & 0o077 == 0
    assert not (l4.home / ".ssh").exists()
    audit = [json.loads(x) for x in l4.posture("audit", "--json").stdout.splitlines()]
    assert any(r["event"] == "l4.enroll" and r["data"]["source"] == "tailnet" for r in audit)
    assert l4.posture("exec", "--level", "l4", "--", "true", cwd=make_repo()).returncode == 0


def test_without_tailnet_key_the_fingerprint_must_be_confirmed(l4) -> None:
    l4.scenario(sshHostKeys=[])
    proc = l4.posture("l4", "enroll")  # no terminal, no --yes
    assert proc.returncode == 64 and "--yes" in proc.stderr, proc.stderr
    assert HostKey.parse(l4.vps.host_key_line).fingerprint() in proc.stderr
    assert pins(l4) == ""
    proc = l4.posture("l4", "enroll", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert l4.vps.host_key_line.split()[1] in pins(l4)


def test_not_enrolled_is_69(l4, make_repo) -> None:
    proc = l4.posture("exec", "--level", "l4", "--", "true", cwd=make_repo())
    assert proc.returncode == 69 and "posture l4 enroll" in proc.stderr, proc.stderr


def test_changed_host_key_is_refused(l4, make_repo) -> None:
    l4.enroll()
    repo = make_repo()
    assert l4.posture("exec", "--level", "l4", "--", "true", cwd=repo).returncode == 0
    old = l4.vps.host_key_line
    try:
        new = l4.vps.new_host_key()  # an impostor (or a reinstalled host) at the same address
        proc = l4.posture("exec", "--level", "l4", "--", "sh", "-c", "echo ran > /tmp/should-not-run", cwd=repo)
        assert proc.returncode == 77, proc.stderr
        assert "changed" in proc.stderr and HostKey.parse(new).fingerprint() in proc.stderr and "fix:" in proc.stderr
        # the tailnet still vouches for the old key: enroll refuses to pin what the host now presents
        proc = l4.posture("l4", "enroll")
        assert proc.returncode == 77 and "not among the host keys the tailnet advertises" in proc.stderr, proc.stderr
        assert old.split()[1] in pins(l4) and new.split()[1] not in pins(l4)
        # once the tailnet advertises the new key, enrolment pins it and sessions work again
        l4.scenario(sshHostKeys=[new])
        assert l4.posture("l4", "enroll").returncode == 0
        assert l4.posture("exec", "--level", "l4", "--", "true", cwd=repo).returncode == 0
    finally:
        l4.vps.new_host_key()
