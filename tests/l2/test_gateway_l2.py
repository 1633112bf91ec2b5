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


def _posture(l2: L2, project: Path, *args: str, extra_env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real console script as the ordinary user, in the GW namespace (the gateway reaches the stand-in from there)."""
    env = l2.env(CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1", **extra_env)
    argv = ["nsenter", f"--net={l2.net.gw_path}", "runuser", "-u", USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
            POSTURE, *args]
    return subprocess.run(argv, cwd=str(project), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _run_claude(l2: L2, project: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`posture exec ... -- claude -p` with the hostile script behind the stand-in."""
    return _posture(l2, project, "exec", str(project), "--level", "l2", "--profile", "claude-code", "--",
                    "claude", "-p", "run the checks", "--dangerously-skip-permissions", extra_env=extra_env)


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


def _check(l2: L2, tmp_path: Path, *, key: str | None, oauth: dict | None, refreshed: dict | None = None) -> None:
    """The hostile run; `refreshed`: the login has expired and the token endpoint answers this."""
    project = l2.make_project(f"gw-{uuid.uuid4().hex[:6]}")
    grant = {oauth["refreshToken"]: refreshed} if oauth and refreshed else None
    api = RemoteStandIn(l2.net.hosts, PUBLIC, API_PORT, hostile(socket_inside=SOCKET_INSIDE), tmp_path / "api", oauth=grant)
    creds = l2.home / ".claude" / ".credentials.json"
    try:
        if oauth is not None:
            creds.write_text(json.dumps({"claudeAiOauth": oauth}))
            os.chown(creds, l2.uid, l2.gid)
            creds.chmod(0o600)
        extra = {"ANTHROPIC_BASE_URL": api.url}
        if refreshed:
            extra["POSTURE_OAUTH_TOKEN_URL"] = f"{api.url}/v1/oauth/token"
        if key:
            extra["ANTHROPIC_API_KEY"] = key
        proc = _run_claude(l2, project, extra)
        requests = api.requests()
        stored = json.loads(creds.read_text()) if oauth is not None else None
    finally:
        api.stop()
        creds.unlink(missing_ok=True)
    assert proc.returncode == 0, f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "finished the hostile script" in proc.stdout
    bearer = refreshed["access_token"] if refreshed else None
    results = assess(requests, key, oauth, f"http://127.0.0.1:{INSIDE_PORT}", doors=2, bearer=bearer)
    assert "UNIXDOOR" in results  # the socket bound in refuses too
    if refreshed:
        # refreshed once, outside: the new token is in the user's own file, never inside
        grants = [r for r in requests if r["path"] == "/v1/oauth/token"]
        assert len(grants) == 1 and json.loads(grants[0]["body"])["refresh_token"] == oauth["refreshToken"]  # the gateway's own call
        assert stored is not None and stored["claudeAiOauth"]["accessToken"] == refreshed["access_token"]
        assert stored["claudeAiOauth"]["refreshToken"] == refreshed["refresh_token"]
        assert refreshed["access_token"] not in results and refreshed["refresh_token"] not in results
    deadline = time.monotonic() + 5
    while _gateways_of(l2.uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gateways_of(l2.uid) == [], "a gateway outlived its session"


def test_claude_api_key_only(l2: L2, tmp_path: Path) -> None:
    _check(l2, tmp_path, key=real("key"), oauth=None)


def test_claude_oauth_only(l2: L2, tmp_path: Path) -> None:
    _check(l2, tmp_path, key=None, oauth=oauth_login())


def test_claude_oauth_expired_refreshed_outside(l2: L2, tmp_path: Path) -> None:
    """The login expired: the gateway refreshes it (the agent inside never tries: its expiry is 2100)."""
    login = {**oauth_login(), "expiresAt": int(time.time() * 1000) - 60_000}
    refreshed = {"access_token": real("oauth"), "refresh_token": real("refresh"), "expires_in": 28800}
    _check(l2, tmp_path, key=None, oauth=login, refreshed=refreshed)


@pytest.mark.parametrize("with_key", [True])
def test_no_credential_no_gateway(l2: L2, with_key: bool) -> None:
    """Control for the fast path: a profile with nothing to broker starts no gateway and shows nothing."""
    project = l2.make_project(f"gw-none-{uuid.uuid4().hex[:6]}")
    proc = l2.posture("exec", str(project), "--level", "l2", "--profile", "claude-code", "--", "sh", "-c",
                      f"env; ls -la ~/.claude/; ls {SOCKET_INSIDE} 2>&1; true")
    assert proc.returncode == 0, proc.stderr
    assert "ANTHROPIC" not in proc.stdout and ".credentials.json" not in proc.stdout and "No such file" in proc.stdout


USE_API = ("curl -s -m 10 -o /dev/null -w '%{http_code}' -H \"x-api-key: $ANTHROPIC_API_KEY\" -H 'content-type: application/json' "
           "-d '{\"model\": \"m\", \"messages\": []}' \"$ANTHROPIC_BASE_URL/v1/messages\"")


@pytest.mark.parametrize("end", ["down", "keeper killed"])
def test_kept_session_gateway_lives_with_its_keeper(l2: L2, tmp_path: Path, end: str) -> None:
    """`posture up --detach`: the keeper holds the gateway; `exec --session` from another process uses it;
    `down`, or the keeper's death, leaves no gateway behind."""
    import signal

    project = l2.make_project(f"gw-kept-{uuid.uuid4().hex[:6]}")
    api = RemoteStandIn(l2.net.hosts, PUBLIC, API_PORT, [{"text": "ok"}], tmp_path / "api")
    key = real("key")
    extra = {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": key}
    try:
        up = _posture(l2, project, "up", str(project), "--level", "l2", "--profile", "claude-code", "--detach", "--", "sleep", "100000", extra_env=extra)
        assert up.returncode == 0, up.stderr
        sid = up.stdout.strip().splitlines()[-1]
        record = json.loads((l2.home / ".local/state/posture/sessions" / f"{sid}.json").read_text())
        gateway = record["data"]["gateway_pid"]
        assert gateway in _gateways_of(l2.uid)
        used = _posture(l2, project, "exec", "--session", sid, "--", "sh", "-c", USE_API, extra_env={})
        assert used.returncode == 0 and used.stdout == "200", (used.stdout, used.stderr)
        assert [r["headers"].get("x-api-key") for r in api.requests()] == [key]
        if end == "down":
            assert _posture(l2, project, "down", "--session", sid, extra_env={}).returncode == 0
        else:
            os.kill(record["keeper_pid"], signal.SIGKILL)
    finally:
        api.stop()
    deadline = time.monotonic() + 10
    while gateway in _gateways_of(l2.uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway not in _gateways_of(l2.uid), "the gateway outlived its session"
    if end != "down":
        _posture(l2, project, "down", "--session", sid, extra_env={})
