"""The gateway process against the stand-in API on loopback: the sentinel is swapped for the real
credential, a request without it gets nothing, nothing is injected toward another host, answers
stream through, a client leaving mid-stream harms nobody, and the gateway dies with its session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from gwenv import REAL_KEY, REAL_OAUTH, StandIn, UnixHTTPConnection, brokered, message_request, sse_events, start

from posture.gateway.broker import Swap

SENTINEL = "sk-ant-api03-" + "s" * 86 + "-sentAA"
OAUTH_SENTINEL = "sk-ant-oat01-" + "t" * 86 + "-sentAA"
HOSTS = ["127.0.0.1"]


def _key_swap(hosts: list[str] = HOSTS) -> Swap:
    return Swap("$ANTHROPIC_API_KEY", SENTINEL, REAL_KEY, hosts)


def _post(gw, headers: dict[str, str], stream: bool = True):
    conn = gw.conn()
    conn.request("POST", "/v1/messages?beta=true", body=message_request(stream), headers={"content-type": "application/json", **headers})
    resp = conn.getresponse()
    return resp.status, resp.read(), conn


def test_api_key_sentinel_swapped_and_stream_arrives(user, tmp_path: Path) -> None:
    with StandIn([{"tool": "Bash", "input": {"command": "echo hi"}}]) as api:
        gw = start(brokered(api.url, [_key_swap()]), tmp_path / "rt")
        try:
            status, body, _ = _post(gw, {"x-api-key": SENTINEL})
            assert status == 200
            events = [e["type"] for e in sse_events(body)]
            assert events[0] == "message_start" and events[-1] == "message_stop" and "content_block_delta" in events
            status, body, _ = _post(gw, {"x-api-key": SENTINEL}, stream=False)
            assert status == 200 and json.loads(body)["stop_reason"] == "tool_use"
        finally:
            gw.stop()
    keys = [r["headers"].get("x-api-key") for r in api.requests]
    assert keys == [REAL_KEY, REAL_KEY]
    assert all(SENTINEL not in json.dumps(r["headers"]) for r in api.requests)


def test_oauth_bearer_swapped(user, tmp_path: Path) -> None:
    with StandIn() as api:
        swap = Swap("~/.claude/.credentials.json:claudeAiOauth.accessToken", OAUTH_SENTINEL, REAL_OAUTH, HOSTS)
        gw = start(brokered(api.url, [swap]), tmp_path / "rt")
        try:
            status, _, _ = _post(gw, {"authorization": f"Bearer {OAUTH_SENTINEL}"})
        finally:
            gw.stop()
    assert status == 200
    assert api.requests[0]["headers"]["authorization"] == f"Bearer {REAL_OAUTH}"


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "sk-ant-api03-" + "x" * 92}, {"authorization": "Bearer nothing"}])
def test_refused_without_the_sessions_sentinel(user, tmp_path: Path, headers: dict[str, str]) -> None:
    with StandIn() as api:
        gw = start(brokered(api.url, [_key_swap()]), tmp_path / "rt")
        try:
            status, body, conn = _post(gw, headers)
            assert status == 403 and b"does not carry the session's credential" in body
            # control: the same connection, with the sentinel, is served
            conn.request("POST", "/v1/messages", body=message_request(False), headers={"x-api-key": SENTINEL})
            assert conn.getresponse().status == 200
        finally:
            gw.stop()
    assert len(api.requests) == 1 and api.requests[0]["headers"]["x-api-key"] == REAL_KEY


def test_not_a_proxy_for_other_hosts(user, tmp_path: Path) -> None:
    """An absolute-form request (a client using the gateway as a forward proxy) gets nothing."""
    import socket

    with StandIn() as api:
        gw = start(brokered(api.url, [_key_swap()]), tmp_path / "rt")
        try:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
                s.sendall(f"GET http://198.51.100.10:8080/ HTTP/1.1\r\nHost: 198.51.100.10\r\nx-api-key: {SENTINEL}\r\n\r\n".encode())
                assert s.recv(4096).startswith(b"HTTP/1.1 403")
        finally:
            gw.stop()
    assert api.requests == []


def test_nothing_injected_toward_another_host(user, tmp_path: Path) -> None:
    """The credential is for api.anthropic.com; an upstream elsewhere never gets it, nor the sentinel."""
    with StandIn() as api:
        gw = start(brokered(api.url, [_key_swap(["api.anthropic.com"])]), tmp_path / "rt")
        try:
            status, _, _ = _post(gw, {"x-api-key": SENTINEL, "authorization": f"Bearer {SENTINEL}"})
        finally:
            gw.stop()
    assert status == 200  # the stand-in answers anyone
    seen = json.dumps(api.requests)
    assert REAL_KEY not in seen and SENTINEL not in seen
    assert "x-api-key" not in api.requests[0]["headers"]


def test_stream_is_not_buffered(user, tmp_path: Path) -> None:
    """The first event reaches the client long before the upstream finishes the stream."""
    import socket

    with StandIn([{"text": "x" * 400}], event_delay=0.2) as api:
        gw = start(brokered(api.url, [_key_swap()]), tmp_path / "rt")
        try:
            body = message_request()
            with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
                began = time.monotonic()
                s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nContent-Length: %d\r\n\r\n%s"
                          % (SENTINEL.encode(), len(body), body))
                got, first_at = b"", None
                while b"message_stop" not in got:
                    chunk = s.recv(65536)
                    assert chunk, got
                    got += chunk
                    if first_at is None and b"message_start" in got:
                        first_at = time.monotonic() - began
                total = time.monotonic() - began
        finally:
            gw.stop()
    assert first_at is not None and first_at < 0.5 and total > 2.0, (first_at, total)


def test_client_leaving_mid_stream(user, tmp_path: Path) -> None:
    with StandIn([{"text": "y" * 800}], event_delay=0.05) as api:
        gw = start(brokered(api.url, [_key_swap()]), tmp_path / "rt")
        try:
            for _ in range(3):
                conn = gw.conn()
                conn.request("POST", "/v1/messages", body=message_request(), headers={"x-api-key": SENTINEL})
                resp = conn.getresponse()
                resp.fp.readline()
                conn.sock.close()  # gone in the middle of the stream
            time.sleep(0.5)
            assert gw.running.proc.poll() is None
            status, body, _ = _post(gw, {"x-api-key": SENTINEL})
            assert status == 200 and b"message_stop" in body
        finally:
            gw.stop()


def test_unix_socket_door(user, tmp_path: Path) -> None:
    with StandIn() as api:
        gw = start(brokered(api.url, [_key_swap()]), tmp_path / "rt", tcp=False)
        try:
            assert oct(os.stat(gw.running.socket).st_mode & 0o777) == "0o600"
            conn = UnixHTTPConnection(gw.running.socket)
            conn.request("POST", "/v1/messages", body=message_request(False), headers={"x-api-key": SENTINEL})
            assert conn.getresponse().status == 200
        finally:
            gw.stop()
        assert not os.path.exists(gw.running.socket)


def test_oauth_refreshed_outside_and_written_back(user, tmp_path: Path) -> None:
    creds = tmp_path / "credentials.json"
    old = {"accessToken": REAL_OAUTH, "refreshToken": "sk-ant-ort01-old", "expiresAt": int(time.time() * 1000) - 1000, "scopes": ["user:inference"]}
    creds.write_text(json.dumps({"claudeAiOauth": old}))
    with StandIn() as api:
        api.oauth["sk-ant-ort01-old"] = {"access_token": "sk-ant-oat01-NEW", "refresh_token": "sk-ant-ort01-new", "expires_in": 3600}
        swap = Swap("oauth", OAUTH_SENTINEL, REAL_OAUTH, HOSTS, oauth={
            "format": "claude-oauth", "file": str(creds), "path": "claudeAiOauth", "doc": old, "token_url": api.url + "/v1/oauth/token"})
        gw = start(brokered(api.url, [swap]), tmp_path / "rt")
        try:
            for _ in range(2):
                status, _, _ = _post(gw, {"authorization": f"Bearer {OAUTH_SENTINEL}"})
                assert status == 200
        finally:
            gw.stop()
    messages = [r for r in api.requests if r["path"].startswith("/v1/messages")]
    assert [r["headers"]["authorization"] for r in messages] == ["Bearer sk-ant-oat01-NEW"] * 2
    assert len([r for r in api.requests if r["path"] == "/v1/oauth/token"]) == 1
    stored = json.loads(creds.read_text())["claudeAiOauth"]
    assert stored["accessToken"] == "sk-ant-oat01-NEW" and stored["refreshToken"] == "sk-ant-ort01-new"
    assert stored["scopes"] == ["user:inference"] and stored["expiresAt"] > time.time() * 1000
    assert oct(creds.stat().st_mode & 0o777) == "0o600"


HOLDER = textwrap.dedent("""
    import socket, sys, time
    from pathlib import Path
    from posture.gateway import launch
    from posture.gateway.broker import Brokered, Swap
    b = Brokered(swaps=[Swap("k", "sk-sentinel-" + "z" * 40, "real", ["127.0.0.1"])], upstream="http://127.0.0.1:9")
    running = launch.start(b, Path(sys.argv[1]), "test")
    print(running.proc.pid, flush=True)
    time.sleep(600)
""")


def test_gateway_dies_with_the_process_holding_the_session(user, tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    runtime.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(runtime)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        pid = int(holder.stdout.readline())
        time.sleep(0.3)
        assert Path(f"/proc/{pid}").exists()
        holder.send_signal(signal.SIGKILL)  # the keeper dies without cleaning up
        holder.wait()
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    finally:
        if holder.poll() is None:
            holder.kill()


def test_expect_continue_and_big_body(user, tmp_path: Path) -> None:
    """curl sends `Expect: 100-continue` with a large body: the gateway answers it and relays the body."""
    with StandIn() as api:
        gw = start(brokered(api.url, [_key_swap()]), tmp_path / "rt")
        try:
            body = tmp_path / "body.json"
            body.write_text(json.dumps({"model": "m", "stream": False, "messages": [{"role": "user", "content": "z" * 3_000_000}]}))
            proc = subprocess.run(["curl", "-s", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"x-api-key: {SENTINEL}",
                                   "-H", "Expect: 100-continue", "--data-binary", f"@{body}", f"http://127.0.0.1:{gw.port}/v1/messages"],
                                  capture_output=True, text=True, timeout=30)
        finally:
            gw.stop()
    assert proc.stdout == "200", proc
    assert len(api.requests[0]["body"]) == 200000 and "expect" not in api.requests[0]["headers"]


def test_api_traffic_in_the_egress_log(user, tmp_path: Path) -> None:
    """Mode none: the one gateway brokers the API and logs each new upstream connection and each refusal."""
    from posture.gateway import launch

    log = tmp_path / "s.egress.jsonl"
    egress = {"mode": "none", "allow": [], "api_hosts": HOSTS, "blocked": [], "log": str(log), "session": "0101-test", "level": "l3"}
    with StandIn() as api:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        (tmp_path / "rt").mkdir()
        running = launch.start(brokered(api.url, [_key_swap()]), tmp_path / "rt", "0101-test", listener=sock, egress=egress)
        try:
            from gwenv import Gw

            gw = Gw(running, port)
            assert _post(gw, {"x-api-key": SENTINEL})[0] == 200
            assert _post(gw, {})[0] == 403
        finally:
            launch.stop(running, running.facts())
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    got = {(e["dest"], e["decision"], e["rule"], e["level"]) for e in lines}
    assert got == {("127.0.0.1", "allowed", "the agent's API", "l3"), ("127.0.0.1", "refused", "no sentinel", "l3")}, lines
    assert REAL_KEY not in log.read_text() and SENTINEL not in log.read_text()
