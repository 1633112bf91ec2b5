"""The real Claude Code CLI inside `posture exec --level l2 --profile claude-code`, against the
stand-in API on the test network's public host, with a hostile scripted model: the agent's own
credential (an API key, or an OAuth login) is nowhere inside, the stand-in gets the real one on
every request, and the gateway leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from l2env import L2, POSTURE, USER

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from posture.gateway import INSIDE_PORT, SOCKET_INSIDE  # noqa: E402
from standin.scripts import RemoteStandIn, assess, hostile, oauth_login, real  # noqa: E402
from testnet import PUBLIC  # noqa: E402

API_PORT = 8443


def _run_claude(l2: L2, project: Path, extra_env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`posture exec ... -- claude -p` as the ordinary user, in the GW namespace (the gateway reaches the stand-in from there)."""
    env = l2.env(CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1", **extra_env)
    argv = ["nsenter", f"--net={l2.net.gw_path}", "runuser", "-u", USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
            POSTURE, "exec", str(project), "--level", "l2", "--profile", "claude-code", "--",
            "claude", "-p", "run the checks", "--dangerously-skip-permissions"]
    return subprocess.run(argv, cwd=str(project), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _gateways_of(uid: int) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"posture.gateway" in argv and os.stat(f"/proc/{pid}").st_uid == uid:
                found.append(int(pid))
        except OSError:
            continue
    return found


def _check(l2: L2, tmp_path: Path, *, key: str | None, oauth: dict | None) -> None:
    project = l2.make_project(f"gw-{uuid.uuid4().hex[:6]}")
    api = RemoteStandIn(l2.net.hosts, PUBLIC, API_PORT, hostile(socket_inside=SOCKET_INSIDE), tmp_path / "api")
    creds = l2.home / ".claude" / ".credentials.json"
    try:
        if oauth is not None:
            creds.write_text(json.dumps({"claudeAiOauth": oauth}))
            os.chown(creds, l2.uid, l2.gid)
            creds.chmod(0o600)
        extra = {"ANTHROPIC_BASE_URL": api.url}
        if key:
            extra["ANTHROPIC_API_KEY"] = key
        proc = _run_claude(l2, project, extra)
        requests = api.requests()
    finally:
        api.stop()
        creds.unlink(missing_ok=True)
    assert proc.returncode == 0, f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "finished the hostile script" in proc.stdout
    results = assess(requests, key, oauth, f"http://127.0.0.1:{INSIDE_PORT}", doors=2)
    assert "UNIXDOOR" in results  # the socket bound in refuses too
    deadline = time.monotonic() + 5
    while _gateways_of(l2.uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gateways_of(l2.uid) == [], "a gateway outlived its session"


def test_claude_api_key_only(l2: L2, tmp_path: Path) -> None:
    _check(l2, tmp_path, key=real("key"), oauth=None)


def test_claude_oauth_only(l2: L2, tmp_path: Path) -> None:
    _check(l2, tmp_path, key=None, oauth=oauth_login())


@pytest.mark.parametrize("with_key", [True])
def test_no_credential_no_gateway(l2: L2, with_key: bool) -> None:
    """Control for the fast path: a profile with nothing to broker starts no gateway and shows nothing."""
    project = l2.make_project(f"gw-none-{uuid.uuid4().hex[:6]}")
    proc = l2.posture("exec", str(project), "--level", "l2", "--profile", "claude-code", "--", "sh", "-c",
                      f"env; ls -la ~/.claude/; ls {SOCKET_INSIDE} 2>&1; true")
    assert proc.returncode == 0, proc.stderr
    assert "ANTHROPIC" not in proc.stdout and ".credentials.json" not in proc.stdout and "No such file" in proc.stdout
