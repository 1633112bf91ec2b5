"""Network modes at L2, tried from inside a real session as the ordinary user.

`posture exec` runs in the test network's GW namespace (where the public stand-in is reachable,
so the session's gateway can reach it), in a private mount namespace whose /etc/hosts names the
test hosts (the gateway resolves names outside). Per mode, a probe inside tries a direct
connection to the public host and to an internal one, a DNS query to an outside resolver, and
CONNECTs through the gateway's door; `posture log --json` shows what was decided, including the
kernel's drop of an internal attempt in public mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from l2env import L2, POSTURE, USER, _quote

from testnet import PORT, PUBLIC, in_ns

from netprobe import HOSTS, HTTP_SERVER, PROBE
from netprobe import closed as _closed


@pytest.fixture(scope="module")
def http_host(l2: L2) -> Iterator[None]:
    """The HTTP server on the public stand-in, in the test network's HOSTS namespace."""
    proc = subprocess.Popen(["ip", "netns", "exec", l2.net.hosts, sys.executable, "-c", HTTP_SERVER, PUBLIC], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def netenv(l2: L2, tmp_path: Path, http_host: None) -> Iterator[L2]:
    """The user's config is the test's to write; removed afterwards."""
    cfg = l2.home / ".config" / "posture" / "config.toml"
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    hosts.chmod(0o644)
    l2.hosts_file = str(hosts)  # type: ignore[attr-defined]
    try:
        yield l2
    finally:
        cfg.unlink(missing_ok=True)


def _config(l2: L2, text: str) -> None:
    cfg = l2.home / ".config" / "posture" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(text)
    subprocess.run(["chown", "-R", f"{l2.uid}:{l2.gid}", str(l2.home / ".config")], check=True)


def _posture(l2: L2, *args: str) -> subprocess.CompletedProcess[str]:
    """The real console script as the ordinary user, in GW, with the test's /etc/hosts."""
    return _posture_env(l2, {}, *args)


def _posture_env(l2: L2, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = " ".join(_quote(f"{k}={v}") for k, v in l2.env(**extra).items())
    inner = (f"mount --bind {_quote(l2.hosts_file)} /etc/hosts && exec runuser -u {USER} -- env -i {env} "  # type: ignore[attr-defined]
             + " ".join(_quote(a) for a in (POSTURE, *args)))
    argv = ["nsenter", f"--net={l2.net.gw_path}", "unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
    return subprocess.run(argv, cwd=str(l2.home), capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def _probe(l2: L2, project: Path, *flags: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    res = _posture(l2, "exec", str(project), "--level", "l2", *flags, "--", "python3", "-c", PROBE)
    for line in res.stdout.splitlines():
        if line.startswith("NET-RESULT:"):
            return json.loads(line.split(":", 1)[1]), res
    raise AssertionError(f"no probe result (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")


def _log(l2: L2, session: str) -> list[dict]:
    res = _posture(l2, "log", "--session", session, "--json")
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def _proxies_of(uid: int) -> list[int]:
    """The user's egress proxy processes (and waiters) still running (none may outlive its session)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            waiter = Path(f"/proc/{pid}/comm").read_bytes().strip() == b"posture-egress"  # forked, not yet the proxy
            if os.stat(f"/proc/{pid}").st_uid == uid and (waiter or b"posture.gateway.egress" in Path(f"/proc/{pid}/cmdline").read_bytes()):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_allowlist_mode(netenv: L2) -> None:
    l2 = netenv
    _config(l2, '[network]\nmode = "allowlist"\nallow = ["public.test"]\n')
    project = l2.make_project(f"nm-{uuid.uuid4().hex[:6]}")
    r, res = _probe(l2, project)
    assert res.returncode == 0, res.stderr
    _closed(r)
    assert r["via:public.test"].startswith("HTTP/1.1 200") and f"hello from {PUBLIC}" in r["via:public.test"], r  # control
    refused = r["via:other.test"]
    assert refused.startswith("HTTP/1.1 403") and "posture" in refused and "network mode allowlist" in refused and "[network] allow" in refused
    assert r["via:tailnet.test"].startswith("HTTP/1.1 403"), r  # not listed (and a blocked range)
    assert r["via:" + PUBLIC].startswith("HTTP/1.1 403"), r  # an address literal in no listed range
    # an ordinary tool goes through the gateway by the proxy variables alone
    assert r["curl_allowed"] == "0|posture-egress-ok public.test:8082|", r
    assert r["curl_refused"].startswith("0|posture: refused other.test:8082 (network mode allowlist"), r
    assert r["curl_https_refused"].startswith("56|") and "403" in r["curl_https_refused"], r
    log = _log(l2, r["session"])
    seen = {(e["dest"], e["decision"], e["rule"]) for e in log}
    assert ("public.test", "allowed", "public.test") in seen
    assert ("other.test", "refused", "mode allowlist") in seen
    assert (PUBLIC, "refused", "mode allowlist") in seen
    assert all(e["session"] == r["session"] and e["level"] == "l2" and e["source"] == "gateway" for e in log)
    allowed = next(e for e in log if e["decision"] == "allowed")
    assert allowed["address"] == PUBLIC and allowed["port"] == PORT
    assert _proxies_of(l2.uid) == []  # the session's proxy went with it


def test_none_mode_flag(netenv: L2) -> None:
    l2 = netenv
    _config(l2, '[network]\nallow = ["public.test"]\n')  # mode public by default; --network none is the user's own choice
    project = l2.make_project(f"nm-{uuid.uuid4().hex[:6]}")
    r, res = _probe(l2, project, "--network", "none")
    assert res.returncode == 0, res.stderr
    _closed(r)
    assert r["via:public.test"].startswith("HTTP/1.1 403") and "network mode none" in r["via:public.test"], r


def test_public_mode_and_kernel_drops_in_the_log(netenv: L2) -> None:
    l2 = netenv
    project = l2.make_project(f"nm-{uuid.uuid4().hex[:6]}")
    r, res = _probe(l2, project)
    assert res.returncode == 0, res.stderr
    assert r["public"] == f"ok:hello from {PUBLIC}", r  # control: the public internet is open
    assert r["tailnet"].startswith("err:"), r  # the kernel refuses the internal range
    assert r["dns_send"] == "sent" and r["https_proxy"] is None, r
    assert "tried to reach blocked ranges" in res.stderr and "100.64.0.0/10" in res.stderr, res.stderr
    log = _log(l2, r["session"])
    kernel = [e for e in log if e["source"] == "kernel"]
    assert any(e["rule"] == "100.64.0.0/10" and e["decision"] == "refused" and e["count"] >= 1 for e in kernel), log
    # the helper removes the session's counters and rules with the session
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = in_ns(l2.net.gw, "nft", "list", "table", "inet", l2.table).stdout
        if r["session"] not in listed:
            break
        time.sleep(0.1)
    assert r["session"] not in listed, listed


def test_repo_file_only_tightens(netenv: L2) -> None:
    l2 = netenv
    _config(l2, '[network]\nmode = "allowlist"\nallow = ["public.test"]\n')
    project = l2.make_project(f"nm-{uuid.uuid4().hex[:6]}")
    (project / ".posture.toml").write_text('[network]\nmode = "public"\nallow = ["public.test", "other.test"]\n')
    os.chown(project / ".posture.toml", l2.uid, l2.gid)
    r, res = _probe(l2, project)
    assert res.returncode == 0, res.stderr
    _closed(r)  # asking for public changed nothing
    assert r["via:public.test"].startswith("HTTP/1.1 200") and r["via:other.test"].startswith("HTTP/1.1 403"), r

    _config(l2, "")
    tight = l2.make_project(f"nm-{uuid.uuid4().hex[:6]}")
    (tight / ".posture.toml").write_text('[network]\nmode = "none"\n')
    os.chown(tight / ".posture.toml", l2.uid, l2.gid)
    r, res = _probe(l2, tight)
    assert res.returncode == 0, res.stderr
    _closed(r)  # asking for none under the user's public applies
    assert r["via:public.test"].startswith("HTTP/1.1 403") and "network mode none" in r["via:public.test"], r
    r, res = _probe(l2, tight, "--network", "public")  # the user's flag cannot undo what the repo tightened
    _closed(r)


def test_one_gateway_brokers_the_credential_and_proxies(netenv: L2) -> None:
    """With a credential to broker, the session's one gateway process (`python -m posture.gateway`) is also its proxy."""
    l2 = netenv
    _config(l2, '[network]\nmode = "allowlist"\nallow = ["public.test"]\n')
    project = l2.make_project(f"nm-{uuid.uuid4().hex[:6]}")
    res = _posture_env(l2, {"ANTHROPIC_API_KEY": "sk-ant-api03-" + "x" * 40}, "exec", str(project), "--level", "l2",
                       "--profile", "claude-code", "--", "python3", "-c", PROBE)
    line = next((x for x in res.stdout.splitlines() if x.startswith("NET-RESULT:")), None)
    assert line is not None, res.stderr[-3000:]
    r = json.loads(line.split(":", 1)[1])
    _closed(r)
    assert r["via:public.test"].startswith("HTTP/1.1 200") and r["via:other.test"].startswith("HTTP/1.1 403"), r
    record = json.loads((l2.home / ".local" / "state" / "posture" / "sessions" / f"{r['session']}.json").read_text())
    assert record["data"].get("gateway_pid") and not record["data"].get("egress_pid"), record["data"]
    assert {(e["dest"], e["decision"]) for e in _log(l2, r["session"])} >= {("public.test", "allowed"), ("other.test", "refused")}


def test_kept_session_drop_summary_at_down(netenv: L2) -> None:
    """`up --detach`: the keeper ends the session, and `posture down` prints the kernel's drops summary."""
    l2 = netenv
    project = l2.make_project(f"nm-{uuid.uuid4().hex[:6]}")
    up = _posture(l2, "up", str(project), "--level", "l2", "--detach", "--", "sleep", "100000")
    assert up.returncode == 0, up.stderr
    sid = up.stdout.strip().splitlines()[-1]
    tried = _posture(l2, "exec", "--session", sid, "--", "python3", "-c", PROBE)
    assert tried.returncode == 0 and '"tailnet": "err:' in tried.stdout, tried.stdout[-500:] + tried.stderr
    down = _posture(l2, "down", "--session", sid)
    assert down.returncode == 0, down.stderr
    assert f"session {sid} tried to reach blocked ranges" in down.stderr and "100.64.0.0/10" in down.stderr, down.stderr
