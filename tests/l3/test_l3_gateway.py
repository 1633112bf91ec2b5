"""The gateway at L3, tried from inside a real guest as the ordinary user: network modes allowlist and
none (the guest has no network interface, its one way out is the gateway's door over a virtio-serial
port), and the real Claude Code CLI running its agent loop in the guest against the stand-in API with
a hostile scripted model (the agent's own credential is nowhere inside, the stand-in gets the real one).

posture runs in the test network's GW namespace (where libvirtd and the public stand-in are), in a
private mount namespace whose /etc/hosts names the test hosts (the gateway resolves names outside).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from l3env import L3, _quote, wait_for
from netprobe import HOSTS, HTTP_SERVER, PROBE, closed

from posture.gateway import INSIDE_PORT
from standin.scripts import GREP_L2, RemoteStandIn, assess, hostile, oauth_login, real
from testnet import PUBLIC

API_PORT = 8443


@pytest.fixture(scope="module")
def gw(l3: L3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[L3]:
    """The HTTP server on the public stand-in, and a hosts file naming the test hosts."""
    proc = subprocess.Popen(["ip", "netns", "exec", l3.net.hosts, sys.executable, "-c", HTTP_SERVER, PUBLIC], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    hosts = tmp_path_factory.mktemp("l3gw") / "hosts"
    hosts.write_text(HOSTS)
    hosts.chmod(0o644)
    os.chmod(hosts.parent, 0o755)
    l3.hosts_file = str(hosts)  # type: ignore[attr-defined]
    yield l3
    proc.terminate()
    proc.wait(10)


def _posture(l3: L3, *args: str, timeout: float = 400, **extra: str) -> subprocess.CompletedProcess[str]:
    """The real console script as the ordinary user, in GW, with the test's /etc/hosts."""
    inner = f"mount --bind {_quote(l3.hosts_file)} /etc/hosts && exec " + " ".join(_quote(a) for a in l3.argv(*args, **extra))  # type: ignore[attr-defined]
    argv = ["nsenter", f"--net={l3.net.gw_path}", "unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
    return subprocess.run(argv, cwd=str(l3.home), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _probe(l3: L3, project: Path, config: Path, *flags: str, **extra: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    res = _posture(l3, "exec", str(project), "--level", "l3", *flags, "--", "python3", "-c", PROBE, XDG_CONFIG_HOME=str(config), **extra)
    for line in res.stdout.splitlines():
        if line.startswith("NET-RESULT:"):
            return json.loads(line.split(":", 1)[1]), res
    raise AssertionError(f"no probe result (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")


def _log(l3: L3, config: Path, session: str) -> list[dict]:
    res = _posture(l3, "log", "--session", session, "--json", XDG_CONFIG_HOME=str(config))
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def _gateway_processes(uid: int) -> list[int]:
    """The user's gateway and egress proxy processes still running (none may outlive its session)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            if os.stat(f"/proc/{pid}").st_uid == uid and (b"posture.gateway" in argv):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_allowlist_mode_at_l3(gw: L3) -> None:
    l3 = gw
    cfg = l3.config('[network]\nmode = "allowlist"\nallow = ["public.test"]\n')
    project = l3.make_project(f"l3nm-{uuid.uuid4().hex[:6]}")
    r, res = _probe(l3, project, cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    closed(r)  # no direct connection (allowed host or not), no DNS, no internal host
    assert r["via:public.test"].startswith("HTTP/1.1 200") and f"hello from {PUBLIC}" in r["via:public.test"], r  # control
    refused = r["via:other.test"]
    assert refused.startswith("HTTP/1.1 403") and "network mode allowlist" in refused and "[network] allow" in refused, r
    assert r["via:tailnet.test"].startswith("HTTP/1.1 403"), r
    assert r["curl_allowed"] == "0|posture-egress-ok public.test:8082|", r
    assert r["curl_refused"].startswith("0|posture: refused other.test:8082 (network mode allowlist"), r
    log = _log(l3, cfg, r["session"])
    seen = {(e["dest"], e["decision"], e["rule"]) for e in log}
    assert ("public.test", "allowed", "public.test") in seen and ("other.test", "refused", "mode allowlist") in seen, log
    assert all(e["level"] == "l3" and e["session"] == r["session"] for e in log), log
    record = json.loads((l3.xdg / "state" / "posture" / "sessions" / f"{r['session']}.json").read_text())
    console = Path(record["data"]["exec_socket"]).parent / "console.log"  # kept for the user after the VM is gone
    assert "posture-t: door" in console.read_text(), console
    assert wait_for(lambda: _gateway_processes(l3.uid) == [], 10), "the session's proxy outlived it"


def test_public_mode_at_l3_and_kernel_drops_in_the_log(gw: L3) -> None:
    l3 = gw
    cfg = l3.config("")
    project = l3.make_project(f"l3nm-{uuid.uuid4().hex[:6]}")
    r, res = _probe(l3, project, cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    assert r["public"] == f"ok:hello from {PUBLIC}", r  # control: the public internet is open
    assert r["tailnet"].startswith("err:"), r  # refused by the kernel, around QEMU
    assert r["https_proxy"] is None, r
    assert "tried to reach blocked ranges" in res.stderr and "100.64.0.0/10" in res.stderr, res.stderr
    kernel = [e for e in _log(l3, cfg, r["session"]) if e["source"] == "kernel"]
    assert any(e["rule"] == "100.64.0.0/10" and e["decision"] == "refused" and e["count"] >= 1 and e["level"] == "l3" for e in kernel), kernel


def test_none_mode_at_l3_with_the_agents_credential(gw: L3) -> None:
    """Mode none: only the profile's API hosts, through the one gateway process that also brokers the key."""
    l3 = gw
    cfg = l3.config('[network]\nallow = ["public.test"]\n')
    project = l3.make_project(f"l3nm-{uuid.uuid4().hex[:6]}")
    key = real("key")
    r, res = _probe(l3, project, cfg, "--network", "none", "--profile", "claude-code", ANTHROPIC_API_KEY=key)
    assert res.returncode == 0, res.stderr[-3000:]
    closed(r)
    assert r["via:public.test"].startswith("HTTP/1.1 403") and "network mode none" in r["via:public.test"], r
    assert key not in json.dumps(r)
    record = json.loads((l3.xdg / "state" / "posture" / "sessions" / f"{r['session']}.json").read_text())
    assert record["data"].get("gateway_pid") and record["data"].get("door"), json.dumps(record["data"])
    assert record["data"].get("network_mode") == "none"
    assert wait_for(lambda: _gateway_processes(l3.uid) == [], 10), "the gateway outlived its session"


def _run_claude(l3: L3, tmp_path: Path, key: str | None, oauth: dict | None) -> None:
    project = l3.make_project(f"l3gw-{uuid.uuid4().hex[:6]}")
    api = RemoteStandIn(l3.net.hosts, PUBLIC, API_PORT, hostile(GREP_L2), tmp_path / "api")
    creds = l3.home / ".claude" / ".credentials.json"
    try:
        extra = {"ANTHROPIC_BASE_URL": api.url, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
        if key:
            extra["ANTHROPIC_API_KEY"] = key
        if oauth is not None:
            creds.parent.mkdir(exist_ok=True)
            creds.write_text(json.dumps({"claudeAiOauth": oauth}))
            os.chown(creds.parent, l3.uid, l3.gid)
            os.chown(creds, l3.uid, l3.gid)
            creds.chmod(0o600)
        proc = _posture(l3, "exec", str(project), "--level", "l3", "--profile", "claude-code", "--",
                        "claude", "-p", "run the checks", "--dangerously-skip-permissions", timeout=600, **extra)
        requests = api.requests()
    finally:
        api.stop()
        creds.unlink(missing_ok=True)
    assert proc.returncode == 0, f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "finished the hostile script" in proc.stdout
    assess(requests, key, oauth, f"http://127.0.0.1:{INSIDE_PORT}", doors=1)
    deadline = time.monotonic() + 10
    while _gateway_processes(l3.uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gateway_processes(l3.uid) == [], "a gateway outlived its session"


def test_real_claude_at_l3_api_key(gw: L3, tmp_path: Path) -> None:
    _run_claude(gw, tmp_path, real("key"), None)


def test_real_claude_at_l3_oauth_login(gw: L3, tmp_path: Path) -> None:
    _run_claude(gw, tmp_path, None, oauth_login())


