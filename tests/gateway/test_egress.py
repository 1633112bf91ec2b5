"""The gateway's forward proxy on loopback, with real clients: urllib through HTTP_PROXY, http.client
tunnels through CONNECT, and a real TLS ClientHello from Python's ssl module whose SNI differs from
the CONNECT host. Test names resolve (by the proxy's resolver, outside) to loopback servers."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from posture.gateway import sni
from posture.gateway.allowlist import Rules, intersect, parse_entry
from posture.gateway.egress import Egress, serve_on
from posture.gateway.egresslog import EgressLog, read

NAMES = {"allowed.test": "127.0.0.1", "a.wild.test": "127.0.0.1", "other.test": "127.0.0.1", "evil.test": "127.0.0.1",
         "api.agent.test": "127.0.0.1", "internal.test": "10.1.2.3"}
BLOCKED = ["10.0.0.0/8", "169.254.0.0/16"]


def _resolve(host: str, port: int) -> list[str]:
    if host in NAMES:
        return [NAMES[host]]
    raise socket.gaierror(socket.EAI_NONAME, "unknown test name")


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"path": self.path, "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """A plain HTTP server and a TLS server (certificate for allowed.test), both on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("tls")
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=allowed.test",
                    "-addext", "subjectAltName=DNS:allowed.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    tls = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    for server in (plain, tls):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"http": plain.server_address[1], "tls": tls.server_address[1], "cert": str(cert)}  # type: ignore[dict-item]
    plain.shutdown()
    tls.shutdown()


class Proxy:
    """An Egress served on 127.0.0.1 by a thread of its own."""

    def __init__(self, rules: Rules, log: Path) -> None:
        self.log_path = log
        self.egress = Egress(rules, EgressLog(log, "0101-test", "l2"), resolve=_resolve)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.stop = self.loop.create_future()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve_on(self.sock, self.egress, self.stop),), daemon=True)
        self.thread.start()

    def lines(self) -> list[dict]:
        return list(read(self.log_path))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set_result, None)
        self.thread.join(5)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    rules = Rules("allowlist", ["allowed.test", "*.wild.test", "internal.test"], ["api.agent.test"], BLOCKED)
    p = Proxy(rules, tmp_path_factory.mktemp("log") / "s.egress.jsonl")
    yield p
    p.close()


def _get(proxy: Proxy, url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy.port}"}))
    try:
        with opener.open(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _connect(proxy: Proxy, target: str) -> tuple[socket.socket, str]:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0] and body == b"":
        body = sock.recv(4096)
    return sock, (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_allowed_name_through_http(proxy: Proxy, upstreams: dict[str, int]) -> None:
    status, body = _get(proxy, f"http://allowed.test:{upstreams['http']}/x?y=1")
    assert status == 200 and json.loads(body) == {"path": "/x?y=1", "host": f"allowed.test:{upstreams['http']}"}
    status, _ = _get(proxy, f"http://a.wild.test:{upstreams['http']}/")
    assert status == 200
    last = proxy.lines()[-2:]
    assert [(x["dest"], x["decision"], x["rule"], x["address"], x["source"]) for x in last] == [
        ("allowed.test", "allowed", "allowed.test", "127.0.0.1", "gateway"), ("a.wild.test", "allowed", "*.wild.test", "127.0.0.1", "gateway")]


def test_allowed_name_through_connect_with_tls(proxy: Proxy, upstreams: dict[str, int]) -> None:
    ctx = ssl.create_default_context(cafile=upstreams["cert"])  # type: ignore[arg-type]
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
    conn.set_tunnel("allowed.test", upstreams["tls"])
    conn.request("GET", "/tls")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["path"] == "/tls"
    conn.close()
    line = proxy.lines()[-1]
    assert (line["dest"], line["port"], line["decision"], line["rule"]) == ("allowed.test", upstreams["tls"], "allowed", "allowed.test")


def test_other_name_refused_with_the_message(proxy: Proxy, upstreams: dict[str, int]) -> None:
    status, body = _get(proxy, f"http://other.test:{upstreams['http']}/")
    assert status == 403
    assert "posture" in body and "network mode allowlist" in body and f"other.test:{upstreams['http']}" in body
    assert "[network] allow" in body
    sock, answer = _connect(proxy, f"other.test:{upstreams['tls']}")
    sock.close()
    assert answer.startswith("HTTP/1.1 403") and "[network] allow" in answer
    last = proxy.lines()[-2:]
    assert all((x["dest"], x["decision"], x["rule"], x["address"]) == ("other.test", "refused", "mode allowlist", None) for x in last)


def test_sni_mismatch_refused(proxy: Proxy, upstreams: dict[str, int]) -> None:
    sock, answer = _connect(proxy, f"allowed.test:{upstreams['tls']}")
    assert answer.startswith("HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=upstreams["cert"])  # type: ignore[arg-type]
    ctx.check_hostname = False
    with pytest.raises(ssl.SSLError) as info:
        ctx.wrap_socket(sock, server_hostname="evil.test")  # a real ClientHello naming another host
    assert "ACCESS_DENIED" in str(info.value).upper()
    sock.close()
    line = proxy.lines()[-1]
    assert (line["dest"], line["decision"], line["rule"]) == ("allowed.test", "refused", "sni")
    assert "evil.test" in line["reason"]


def test_tls_without_sni_to_a_name_refused(proxy: Proxy, upstreams: dict[str, int]) -> None:
    sock, answer = _connect(proxy, f"allowed.test:{upstreams['tls']}")
    assert answer.startswith("HTTP/1.1 200")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(sock)  # no server_hostname: no SNI at all
    sock.close()
    assert proxy.lines()[-1]["rule"] == "sni"


def test_ip_literal_refused_unless_listed(proxy: Proxy, upstreams: dict[str, int], tmp_path: Path) -> None:
    status, body = _get(proxy, f"http://127.0.0.1:{upstreams['http']}/")
    assert status == 403 and "127.0.0.1" in body
    sock, answer = _connect(proxy, f"127.0.0.1:{upstreams['tls']}")
    sock.close()
    assert answer.startswith("HTTP/1.1 403")
    assert proxy.lines()[-1]["rule"] == "mode allowlist" and proxy.lines()[-1]["dest"] == "127.0.0.1"
    listed = Proxy(Rules("allowlist", ["127.0.0.0/30"], [], BLOCKED), tmp_path / "l.jsonl")
    try:
        status, _ = _get(listed, f"http://127.0.0.1:{upstreams['http']}/")
        assert status == 200 and listed.lines()[-1]["rule"] == "127.0.0.0/30"
    finally:
        listed.close()


def test_name_resolving_into_a_blocked_range_refused(proxy: Proxy) -> None:
    status, body = _get(proxy, "http://internal.test:8080/")
    assert status == 403 and "10.0.0.0/8" in body
    line = proxy.lines()[-1]
    assert (line["dest"], line["decision"], line["rule"]) == ("internal.test", "refused", "10.0.0.0/8")
    status, body = _get(proxy, "http://169.254.169.254/latest/meta-data")
    assert status == 403 and proxy.lines()[-1]["rule"] == "169.254.0.0/16"


def test_none_mode_reaches_only_the_api_hosts(upstreams: dict[str, int], tmp_path: Path) -> None:
    p = Proxy(Rules("none", ["allowed.test"], ["api.agent.test"], BLOCKED), tmp_path / "n.jsonl")
    try:
        status, _ = _get(p, f"http://api.agent.test:{upstreams['http']}/v1")
        assert status == 200
        status, body = _get(p, f"http://allowed.test:{upstreams['http']}/")
        assert status == 403 and "network mode none" in body and "--network allowlist" in body
        assert [(x["dest"], x["decision"], x["rule"]) for x in p.lines()] == [
            ("api.agent.test", "allowed", "api:api.agent.test"), ("allowed.test", "refused", "mode none")]
    finally:
        p.close()


def test_server_first_protocol_through_connect(proxy: Proxy) -> None:
    """A tunnel whose server speaks first (like the test network's hosts) gets the greeting at once."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def greet() -> None:
        c, _ = srv.accept()
        c.sendall(b"hello from greeter\n")
        c.close()

    threading.Thread(target=greet, daemon=True).start()
    sock, answer = _connect(proxy, f"allowed.test:{srv.getsockname()[1]}")
    data = answer.partition("\r\n\r\n")[2].encode()
    while b"\n" not in data:
        chunk = sock.recv(100)
        if not chunk:
            break
        data += chunk
    sock.close()
    srv.close()
    assert data == b"hello from greeter\n"


def test_allowlist_entries_and_repo_intersection() -> None:
    assert parse_entry("PyPI.org:443").port == 443
    assert parse_entry("203.0.113.7").text == "203.0.113.7/32"
    for bad in ("", "*.com", "a b", "x.org:99999", "*"):
        with pytest.raises(ValueError):
            parse_entry(bad)
    kept, ignored = intersect(["*.pythonhosted.org", "pypi.org", "203.0.113.0/24"],
                              ["files.pythonhosted.org", "pypi.org:443", "evil.example", "203.0.113.8/29", "198.51.100.0/24"])
    assert kept == ["files.pythonhosted.org", "pypi.org:443", "203.0.113.8/29"]
    assert ignored == ["evil.example", "198.51.100.0/24"]


def test_client_hello_parser_reads_python_ssl_sni() -> None:
    """The SNI parser against the bytes of a real ClientHello (ssl.MemoryBIO, no network)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="files.pythonhosted.org")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    reader = asyncio.StreamReader()
    reader.feed_data(hello)
    raw, name = asyncio.run(sni.read_client_hello(reader))
    assert name == "files.pythonhosted.org" and raw == hello
