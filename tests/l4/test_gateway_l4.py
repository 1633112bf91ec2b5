"""L4 with a host that has no agent credential of its own: the real Claude Code CLI on the host works,
its API calls come back over posture's own SSH connection to the session's gateway, and neither the
user's API key nor OAuth token is anywhere on the host."""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from standin.scripts import GREP_L4, RemoteStandIn, assess, hostile, oauth_login, real  # noqa: E402
from testnet import PUBLIC  # noqa: E402

pytestmark = pytest.mark.l4
API_PORT = 8443


def _no_host_credential(vps) -> Path:
    home = Path(pwd.getpwnam(vps.user).pw_dir)
    shutil.rmtree(home / ".claude", ignore_errors=True)
    (home / ".claude.json").unlink(missing_ok=True)
    return home


def _run(l4, make_repo, tmp_path: Path, key: str | None, oauth: dict | None) -> None:
    l4.enroll()
    host_home = _no_host_credential(l4.vps)
    repo = make_repo()
    api = RemoteStandIn(l4.net.hosts, PUBLIC, API_PORT, hostile(GREP_L4), tmp_path / "api")
    env = {"ANTHROPIC_BASE_URL": api.url, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    if key:
        env["ANTHROPIC_API_KEY"] = key
    if oauth:
        creds = l4.home / ".claude" / ".credentials.json"
        creds.parent.mkdir(parents=True, exist_ok=True)
        creds.write_text(json.dumps({"claudeAiOauth": oauth}))
        creds.chmod(0o600)
    try:
        proc = l4.posture("exec", str(repo), "--level", "l4", "--profile", "claude-code", "--",
                          "claude", "-p", "run the checks", "--dangerously-skip-permissions", cwd=repo, env=env)
        requests = api.requests()
    finally:
        api.stop()
    assert proc.returncode == 0, f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "finished the hostile script" in proc.stdout
    results = assess(requests, key, oauth, "http://127.0.0.1:", doors=1)
    assert "POSTURE_LEVEL=l4" in results
    # nothing of the real credentials anywhere on the host, and the host has no login of its own
    secrets = [s for s in (key, *(oauth or {}).values()) if isinstance(s, str) and s.startswith("sk-ant-")]
    for secret in secrets:
        found = subprocess.run(["grep", "-rlF", secret, str(host_home)], capture_output=True, text=True)
        assert found.stdout == "", found.stdout
    assert not (host_home / ".claude" / ".credentials.json").exists()
    gateways = subprocess.run(["pgrep", "-f", "posture.gateway"], capture_output=True, text=True).stdout.split()
    mine = [p for p in gateways if Path(f"/proc/{p}/environ").exists() and str(l4.home).encode() in Path(f"/proc/{p}/environ").read_bytes()]
    assert mine == [], "a gateway outlived its session"


def test_l4_host_without_credentials_api_key(l4, make_repo, tmp_path: Path) -> None:
    _run(l4, make_repo, tmp_path, real("key"), None)


def test_l4_host_without_credentials_oauth(l4, make_repo, tmp_path: Path) -> None:
    _run(l4, make_repo, tmp_path, None, oauth_login())
