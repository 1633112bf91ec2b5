"""Random bytes (and random near-valid TOML) as .posture.toml never crash posture:
it exits 0 (valid) or 64 with exactly one line naming the file."""

from __future__ import annotations

import contextlib
import io
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posture import cli

KEYS = ["floor", "profile", "trusted_remotes", "identities", "rules", "intent", "env", "deny", "network", "mounts", "l3", "bogus",
        "rules.push_intent", "intent.push", "env.drop", "env.pass", "deny.paths", "network.block", "network.allow"]
VALUES = ['"l2"', '"l4"', '"l9"', "true", "1", '["A"]', '["10.0.0.0/8"]', '["../x"]', "[1, 2]", "{}", '"x"', "[", '"\\u0000"', "1979-05-27"]


@pytest.fixture(scope="module")
def project() -> Path:
    root = Path(tempfile.mkdtemp(prefix="posture-fuzz-"))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def run_explain(project: Path, payload: bytes) -> tuple[int, str]:
    (project / ".posture.toml").write_bytes(payload)
    err = io.StringIO()
    out = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        with pytest.raises(SystemExit) as exited:
            cli.main(["explain", str(project), "--json"])
    return exited.value.code, err.getvalue()


def check(project: Path, payload: bytes) -> None:
    code, err = run_explain(project, payload)
    assert code in (0, 64), (payload, code, err)
    if code == 64:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert str(project / ".posture.toml") in lines[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes(user, project: Path, payload: bytes) -> None:
    check(project, payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES), st.booleans()), max_size=6))
def test_random_near_valid_toml(user, project: Path, entries) -> None:
    lines = []
    for key, value, as_table in entries:
        if as_table and "." in key:
            table, sub = key.split(".", 1)
            lines += [f"[{table}]", f"{sub} = {value}"]
        else:
            lines.append(f"{key} = {value}")
    check(project, "\n".join(lines).encode())


def test_real_console_script_on_garbage(user, project: Path) -> None:
    (project / ".posture.toml").write_bytes(b"\x00\xff[[[\n")
    proc = user.run("explain", str(project))
    assert proc.returncode == 64
    assert len(proc.stderr.strip().splitlines()) == 1 and ".posture.toml:1" in proc.stderr
