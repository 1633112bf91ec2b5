"""The audit log is hash-chained: any change, removal or reordering is found."""

from __future__ import annotations

import json

from posture import audit


def _lines():
    return audit.log_path().read_text().splitlines()


def test_chain_verifies_and_tampering_is_found(user) -> None:
    for i in range(5):
        audit.record("event", n=i)
    assert audit.verify().ok and audit.verify().records == 5
    original = _lines()

    changed = list(original)
    rec = json.loads(changed[2])
    rec["data"]["n"] = 99
    changed[2] = json.dumps(rec, sort_keys=True)
    audit.log_path().write_text("\n".join(changed) + "\n")
    v = audit.verify()
    assert not v.ok and v.broken_at == 3 and "changed" in v.reason

    audit.log_path().write_text("\n".join(original[:1] + original[2:]) + "\n")
    v = audit.verify()
    assert not v.ok and v.broken_at == 2

    audit.log_path().write_text("\n".join([original[1], original[0], *original[2:]]) + "\n")
    assert not audit.verify().ok

    audit.log_path().write_text("\n".join(original) + "\n")
    assert audit.verify().ok


def test_cli_verify_reports_broken_line(user) -> None:
    audit.record("a")
    audit.record("b")
    assert user.run("audit", "verify").returncode == 0
    lines = _lines()
    rec = json.loads(lines[1])
    rec["event"] = "forged"
    audit.log_path().write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    proc = user.run("audit", "verify")
    assert proc.returncode == 77
    assert f"{audit.log_path()}:2:" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    shown = user.run("audit").stdout
    assert "forged" in shown


def test_log_lives_in_state_dir(user) -> None:
    audit.record("x")
    assert str(audit.log_path()).startswith(str(user.state))
