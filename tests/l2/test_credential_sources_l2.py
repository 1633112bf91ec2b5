"""`[credentials.NAME]` in the user's config at L2, for real: the key comes from a command (a
password-manager stand-in run outside the boundary) or from a file elsewhere in the home; inside,
only its sentinel exists (env, files, processes); the stand-in API on the test network's public host
receives the real key; a failing command refuses the session (69), naming the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from l2env import L2, POSTURE, USER

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from posture.gateway import INSIDE_PORT, SOCKET_INSIDE  # noqa: E402
from standin.scripts import RemoteStandIn, assess, hostile, oauth_login, real  # noqa: E402
from testnet import PUBLIC  # noqa: E402

API_PORT = 8443
# Inside: the agent's variable, every key-shaped string anywhere it can read, then one API call with it.
PROBE = ("echo INSIDE=$ANTHROPIC_API_KEY; echo GREP-BEGIN; "
         "grep -rhoaE 'sk-ant-[A-Za-z0-9_-]{20,}' ~ /tmp /run /etc /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | sort -u; "
         "echo GREP-END; curl -s -m 10 -o /dev/null -w 'HTTP=%{http_code}' -H \"x-api-key: $ANTHROPIC_API_KEY\" "
         "-H 'content-type: application/json' -d '{\"model\": \"m\", \"messages\": []}' \"$ANTHROPIC_BASE_URL/v1/messages\"")


@pytest.fixture
def creds(l2: L2) -> Iterator[L2]:
    """The user's config and the test's secret files are the test's to write; removed afterwards."""
    made = [l2.home / ".config" / "posture" / "config.toml", l2.home / "vault"]
    try:
        yield l2
    finally:
        made[0].unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(made[1])], check=True)


def _own(l2: L2, path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    subprocess.run(["chown", "-R", f"{l2.uid}:{l2.gid}", str(l2.home / ".config"), str(l2.home / "vault")], check=False)
    os.chown(path, l2.uid, l2.gid)


def _config(l2: L2, text: str) -> None:
    (l2.home / ".config" / "posture").mkdir(parents=True, exist_ok=True)
    _own(l2, l2.home / ".config" / "posture" / "config.toml", text, 0o644)


def _exec(l2: L2, project: Path, extra_env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    """`posture exec --level l2 --profile claude-code -- COMMAND` (default: sh -c PROBE) as the user, in GW
    (where the gateway reaches the stand-in)."""
    env = l2.env(CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1", **extra_env)
    argv = ["nsenter", f"--net={l2.net.gw_path}", "runuser", "-u", USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
            POSTURE, "exec", str(project), "--level", "l2", "--profile", "claude-code", "--", *(command or ("sh", "-c", PROBE))]
    return subprocess.run(argv, cwd=str(project), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _seen(out: str) -> tuple[str, set[str]]:
    inside = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("INSIDE="))
    grep = out.split("GREP-BEGIN\n", 1)[1].split("GREP-END", 1)[0]
    return inside, {line for line in grep.splitlines() if line}


@pytest.mark.parametrize("kind", ["command", "file"])
def test_key_from_a_users_source_reaches_only_the_api(creds: L2, tmp_path: Path, kind: str) -> None:
    l2 = creds
    key = real("key")
    decoy = real("key")  # what the profile would take from the environment: the user's config says otherwise
    if kind == "command":
        script = l2.home / "vault" / "fetch-key"
        _own(l2, script, f"#!/bin/sh\n# a password manager's stand-in: prints the key, run outside the boundary\necho '{key}'\n", 0o700)
        _config(l2, f'[credentials.anthropic]\ncommand = ["{script}", "show", "anthropic"]\ninside_env = "ANTHROPIC_API_KEY"\n')
    else:
        keyfile = l2.home / "vault" / "anthropic.key"
        _own(l2, keyfile, key + "\n", 0o600)
        _config(l2, '[credentials.anthropic]\nfile = "~/vault/anthropic.key"\ninside_env = "ANTHROPIC_API_KEY"\n')
    project = l2.make_project(f"gw-src-{uuid.uuid4().hex[:6]}")
    api = RemoteStandIn(l2.net.hosts, PUBLIC, API_PORT, [{"text": "ok"}], tmp_path / "api")
    try:
        proc = _exec(l2, project, {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": decoy})
        requests = api.requests()
    finally:
        api.stop()
    assert proc.returncode == 0, f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    inside, found = _seen(proc.stdout)
    # inside: the sentinel only, of the same shape; neither the real key nor the decoy anywhere
    assert inside.startswith("sk-ant-api03-") and len(inside) == len(key) and inside not in (key, decoy)
    assert key not in proc.stdout and decoy not in proc.stdout and key not in proc.stderr
    assert found <= {inside}, found
    # the stand-in got the real key, from the user's source, on the API call
    assert proc.stdout.rstrip().endswith("HTTP=200"), proc.stdout[-300:]
    assert [r["headers"].get("x-api-key") for r in requests] == [key]
    # the audit log says where it came from, never the value
    log = (l2.home / ".local" / "state" / "posture" / "audit.log").read_text()
    start = [json.loads(line) for line in log.splitlines() if '"gateway.start"' in line][-1]
    given = start["data"]["credentials"]
    assert [(g["name"], g["source"].split(" ")[0]) for g in given] == [("$ANTHROPIC_API_KEY", "[credentials.anthropic]")]
    assert key not in log and inside not in log


def test_a_failing_command_refuses_the_session(creds: L2, tmp_path: Path) -> None:
    l2 = creds
    script = l2.home / "vault" / "locked"
    _own(l2, script, "#!/bin/sh\necho 'gpg: decryption failed: No secret key' >&2\nexit 2\n", 0o700)
    _config(l2, f'[credentials.anthropic]\ncommand = ["{script}"]\ninside_env = "ANTHROPIC_API_KEY"\n')
    project = l2.make_project(f"gw-src-{uuid.uuid4().hex[:6]}")
    proc = _exec(l2, project, {"ANTHROPIC_API_KEY": real("key")})
    assert proc.returncode == 69, (proc.returncode, proc.stdout, proc.stderr)
    assert "credentials.anthropic.command" in proc.stderr and "exited with 2 (gpg: decryption failed: No secret key)" in proc.stderr
    assert "INSIDE=" not in proc.stdout  # nothing ran inside
    lines = proc.stderr.strip().splitlines()  # the level's announcement, then the one error line
    assert lines[-1].startswith("posture: credentials.anthropic.command: ") and "fix: " in lines[-1], proc.stderr


def test_real_claude_with_its_login_from_a_users_command(creds: L2, tmp_path: Path) -> None:
    """The real Claude Code CLI, logged in only through `[credentials]` (a command printing the OAuth
    login JSON, standing for ~/.claude/.credentials.json), against the hostile script: no real token
    anywhere inside, the stand-in gets the real one on every request."""
    l2 = creds
    login = oauth_login()
    script = l2.home / "vault" / "login"
    _own(l2, script, f"#!/bin/sh\ncat <<'EOF'\n{json.dumps({'claudeAiOauth': login})}\nEOF\n", 0o700)
    _config(l2, f'[credentials.claude]\ncommand = ["{script}"]\ninside_file = ".claude/.credentials.json"\n')
    assert not (l2.home / ".claude" / ".credentials.json").exists()  # no login where the profile would look
    project = l2.make_project(f"gw-src-{uuid.uuid4().hex[:6]}")
    api = RemoteStandIn(l2.net.hosts, PUBLIC, API_PORT, hostile(socket_inside=SOCKET_INSIDE), tmp_path / "api")
    try:
        proc = _exec(l2, project, {"ANTHROPIC_BASE_URL": api.url}, "claude", "-p", "run the checks", "--dangerously-skip-permissions")
        requests = api.requests()
    finally:
        api.stop()
    assert proc.returncode == 0, f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "finished the hostile script" in proc.stdout
    results = assess(requests, None, login, f"http://127.0.0.1:{INSIDE_PORT}", doors=2)
    assert login["refreshToken"] not in results and login["accessToken"] not in results
